//! The backend API's keys: configured, or generated once for embedded mode.

use super::StartError;
use crate::config::{Config, api_key_problem};

/// The API keys in force. Without configured keys, embedded mode (no
/// database URL, no Redis) generates one at first start and keeps it in a
/// file readable only by its owner; any other mode refuses to start, so no
/// default key can ever open a production API.
pub(super) fn resolve_api_keys(config: &Config) -> Result<Vec<String>, StartError> {
    if !config.api.keys.is_empty() {
        return Ok(config.api.keys.clone());
    }
    if !config.is_embedded() {
        return Err(StartError::Config {
            key: "api.keys",
            message: "required when database.url or redis.url is set".into(),
        });
    }
    let path = config
        .api
        .key_file
        .clone()
        .unwrap_or_else(|| config.database.sqlite_path.with_extension("api-key"));
    let key_file_error = |source| StartError::KeyFile {
        path: path.clone(),
        source,
    };
    if path.exists() {
        let key = std::fs::read_to_string(&path).map_err(key_file_error)?;
        let key = key.trim().to_string();
        // The same rules as `api.keys`: a file holding `x` must not make
        // `Bearer x` a key.
        if let Err(problem) = api_key_problem(&key) {
            return Err(StartError::Config {
                key: "api.key_file",
                message: format!("{}: {problem}", path.display()),
            });
        }
        return Ok(vec![key]);
    }
    let key = generate_api_key();
    write_private(&path, &key).map_err(key_file_error)?;
    eprintln!(
        "wsgate: no api.keys configured; generated an API key for embedded mode in {} \
         (use it with: Authorization: Bearer $(cat {}))",
        path.display(),
        path.display()
    );
    Ok(vec![key])
}

fn generate_api_key() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    format!(
        "wsk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")
}
