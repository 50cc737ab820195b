//! A missing ONNX Runtime library is a startup error naming the path, not a panic.
//! Its own test binary: the runtime loads once per process, so no other test here.

use rankmesh_common::onnx::{OnnxConfig, OnnxError, init_runtime};

#[test]
fn missing_library_is_an_error_not_a_panic() {
    let cfg = OnnxConfig {
        library: "/nonexistent/libonnxruntime.so".into(),
        ..OnnxConfig::default()
    };
    match init_runtime(&cfg) {
        Err(OnnxError::Library { path, message }) => {
            assert_eq!(path.to_str(), Some("/nonexistent/libonnxruntime.so"));
            assert!(message.contains("no such file"), "{message}");
        }
        other => panic!("expected a library error, got {other:?}"),
    }
}
