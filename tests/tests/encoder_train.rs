//! `meshctl encoder train` end to end on a generated store: the split, hard
//! negatives from a private mesh's candidate lists, fine-tuning in PyTorch, the ONNX
//! export checked against it, dev figures, then `--publish --promote` into a running
//! mesh under load: the embedding replica re-embeds its catalog with the new encoder
//! and swaps encoder and index at one instant, and no search fails.
//!
//! Needs PyTorch (`scripts/setup --train`, about 4 GB, never installed by default):
//! ignored by a plain `cargo test`; `scripts/test` runs it where `.venv` has PyTorch
//! and lists it as not run elsewhere.

use std::path::Path;
use std::process::Command;

use rankmesh_tests::mesh::{LocalMesh, bench_report, search_load, summary};
use rankmesh_tests::process::binary;

fn meshctl_ok(mesh: &LocalMesh, args: &[&str]) -> String {
    let out = mesh
        .meshctl_command()
        .args(args)
        .output()
        .expect("run meshctl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "meshctl {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("JSON")
}

#[test]
#[ignore = "needs PyTorch: scripts/setup --train; scripts/test runs it where .venv has it"]
fn trains_an_encoder_and_rolls_it_out_under_load() {
    let store = tempfile::tempdir().expect("store dir");
    let generated = Command::new(binary("meshctl"))
        .args([
            "catalog", "generate", "--items", "600", "--users", "20", "--seed", "7", "--out",
        ])
        .arg(store.path())
        .output()
        .expect("generate a store");
    assert!(generated.status.success());
    let catalog = store.path().join("catalog.jsonl");
    let labels = store.path().join("labels.csv");
    let mesh = LocalMesh::up_with_catalog(1, &catalog, &[]);
    let out = mesh.state.path().join("encoder");
    let work = mesh.state.path().join("encoder-work");
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let base = rankmesh_tests::free_port_block(16);
    let train = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "encoder",
            "train",
            "--catalog",
            &s(&catalog),
            "--judgments",
            &s(&labels),
            "--out",
            &s(&out),
            "--work",
            &s(&work),
            "--max-minutes",
            "1",
            "--mesh-etcd-port",
            &base.to_string(),
            "--mesh-base-port",
            &(base + 2).to_string(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        meshctl_ok(&mesh, &args)
    };

    // Trained: the private mesh's candidate lists, the export and the figures.
    train(&[]);
    let candidates = std::fs::read_to_string(out.join("candidates.jsonl")).expect("candidates");
    let first: serde_json::Value =
        serde_json::from_str(candidates.lines().next().expect("a line")).expect("JSON line");
    assert!(
        first["ids"].as_array().is_some_and(|ids| ids.len() >= 50),
        "{first}"
    );
    let training = json(&out.join("training.json"));
    assert!(
        training["export_check"]["cosine_min"].as_f64() >= Some(0.999),
        "{training}"
    );
    assert!(training["run"]["steps"].as_u64() > Some(0), "{training}");
    let metrics = json(&out.join("metrics.json"));
    for (when, variant) in [("dev_before", "dense_fp32"), ("dev_after", "dense_int8")] {
        let ndcg = metrics[when][variant]["ndcg@10"].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&ndcg), "{metrics}");
    }
    for f in ["fp32/model.onnx", "int8/model.onnx", "fp32/tokenizer.json"] {
        assert!(out.join("encoder").join(f).is_file(), "{f}");
    }

    // Published and promoted under load: the replica re-embeds, then swaps.
    let queries = s(&store.path().join("queries.txt"));
    let load = mesh.bench(&search_load(&queries, "20", "120"));
    std::thread::sleep(std::time::Duration::from_secs(5));
    let published = train(&["--resume", "--publish", "--promote"]);
    assert!(published.contains("encoder"), "{published}");
    let report = bench_report(load);
    assert_eq!(report["failed"], 0, "{}", summary(&report));
    // Per second, the encoder versions that answered: v1, then v2 from one second
    // on, and never v1 again (one embedding replica: one instant).
    let seconds = report["timeline"].as_array().expect("timeline");
    let seen = |t: &serde_json::Value, v: &str| t["models"].get(v).is_some();
    let first_v2 = seconds
        .iter()
        .position(|t| seen(t, "encoder:2"))
        .unwrap_or_else(|| panic!("encoder v2 never answered: {report}"));
    assert!(seconds[..first_v2].iter().any(|t| seen(t, "encoder:1")));
    assert!(
        !seconds[first_v2 + 1..].iter().any(|t| seen(t, "encoder:1")),
        "encoder v1 answered after v2 did: {report}"
    );
}
