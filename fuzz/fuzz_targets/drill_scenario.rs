//! A drill scenario file (`meshctl drill run FILE`): any text is parsed and checked,
//! and answers a scenario or an error naming the field; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(s) = rankmesh_drill::scenario::Scenario::parse(text)
    {
        // What a valid scenario promises the engine.
        assert!(!s.name.is_empty());
        assert!(s.load.qps > 0.0);
        assert!(s.faults.iter().all(|f| f.at_s < s.load.duration_s as f64));
    }
});
