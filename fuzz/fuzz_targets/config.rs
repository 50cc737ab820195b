//! A service's configuration: a TOML file and `RANKMESH__*` overrides, loaded and
//! checked as every binary does before binding anything. The input is the file,
//! then after a NUL byte `KEY=VALUE` lines for the environment.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

rankmesh_common::service_config! {
    /// The common sections every service has.
    pub struct Config {}
}

impl Config {
    /// No sections of its own to check.
    fn validate_service(&self) -> Result<(), rankmesh_common::config::ConfigError> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let (file, env) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(file) else {
        return;
    };
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let path = Path::new("fuzz.toml");
    if let Ok(config) = rankmesh_common::config::load_text::<Config>(Some((path, text)), env) {
        let _ = rankmesh_common::scaffold::validate_all(&config);
    }
});
