//! Secrets from files: `WSGATE__SECTION__KEY__FILE=/path` gives
//! `section.key` the file's content, trimmed of surrounding whitespace (a
//! Kubernetes Secret mounted as files, Docker secrets). For a list key
//! (`api.keys`, ...) the content is split on commas and newlines, each item
//! trimmed, empty items dropped.
//!
//! Files are read once, when the configuration is loaded: a changed file
//! takes effect at the next start (a rollout). The content never appears in
//! an error: unreadable files are named by variable and path, and errors
//! about the values are scrubbed of it ([`FileValues::scrub`]).

use std::collections::BTreeMap;
use std::io::Read;

use super::ConfigError;

const PREFIX: &str = "WSGATE__";
const SUFFIX: &str = "__FILE";
/// Larger files are refused: a secret is small, and `/dev/zero` is endless.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The environment with every `…__FILE` variable replaced by the variable
/// it stands for, and the secrets read, to keep out of error messages.
pub(super) struct FileValues {
    pub vars: Vec<(String, String)>,
    secrets: Vec<String>,
}

/// `WSGATE__API__KEYS__FILE` -> `WSGATE__API__KEYS`, for a variable that
/// names a file.
fn target_var(var: &str) -> Option<&str> {
    let cut = var.len().checked_sub(SUFFIX.len())?;
    let (target, suffix) = (var.get(..cut)?, var.get(cut..)?);
    let name = target.strip_prefix(PREFIX)?;
    (suffix.eq_ignore_ascii_case(SUFFIX) && !name.is_empty()).then_some(target)
}

/// `WSGATE__API__KEYS` -> `api.keys` (as the environment layer reads it).
fn config_key(var: &str) -> String {
    var.strip_prefix(PREFIX)
        .unwrap_or(var)
        .split("__")
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(".")
}

fn read_file(var: &str, path: &str) -> Result<String, ConfigError> {
    if path.trim().is_empty() {
        return Err(ConfigError::invalid(
            var,
            "names no file (the value is empty)",
        ));
    }
    let cannot = |e: std::io::Error| ConfigError::invalid(var, format!("cannot read {path}: {e}"));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::invalid(
            var,
            format!("{path} is larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| ConfigError::invalid(var, format!("{path} is not UTF-8 text")))
}

impl FileValues {
    /// Reads the files named by `WSGATE__…__FILE` variables of `env`.
    /// `list_keys` are the keys whose value is a list (comma-separated in
    /// the environment). A key given both directly and as a file is an
    /// error, as is a file that cannot be read.
    pub fn read(
        env: impl IntoIterator<Item = (String, String)>,
        list_keys: &[&str],
    ) -> Result<FileValues, ConfigError> {
        let mut vars = Vec::new();
        let mut files = Vec::new();
        for (var, value) in env {
            match target_var(&var) {
                Some(target) => files.push((var.clone(), target.to_string(), value)),
                None => vars.push((var, value)),
            }
        }
        // Which variable sets each key, to refuse two of them.
        let mut set_by: BTreeMap<String, String> = vars
            .iter()
            .filter(|(var, _)| var.starts_with(PREFIX))
            .map(|(var, _)| (config_key(var), var.clone()))
            .collect();
        let mut secrets = Vec::new();
        for (var, target, path) in files {
            let key = config_key(&target);
            if let Some(other) = set_by.insert(key.clone(), var.clone()) {
                return Err(ConfigError::invalid(
                    &key,
                    format!("both {other} and {var} are set: give one of them"),
                ));
            }
            let content = read_file(&var, &path)?;
            let value = if list_keys.contains(&key.as_str()) {
                let items: Vec<&str> = content
                    .split([',', '\n'])
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .collect();
                secrets.extend(items.iter().map(|item| item.to_string()));
                items.join(",")
            } else {
                content.trim().to_string()
            };
            if !value.is_empty() {
                secrets.push(value.clone());
            }
            vars.push((target, value));
        }
        // Longest first, so that a secret containing another is hidden whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Ok(FileValues { vars, secrets })
    }

    /// `e` with every secret read from a file replaced by `********`.
    pub fn scrub(&self, e: ConfigError) -> ConfigError {
        let hide = |text: String| {
            self.secrets.iter().fold(text, |text, secret| {
                text.replace(secret.as_str(), "********")
            })
        };
        match e {
            ConfigError::Invalid { key, message } => ConfigError::Invalid {
                key,
                message: hide(message),
            },
            ConfigError::Load(message) => ConfigError::Load(hide(message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(dir: &std::path::Path, name: &str, content: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    }

    #[test]
    fn names_of_file_variables() {
        assert_eq!(
            target_var("WSGATE__API__KEYS__FILE"),
            Some("WSGATE__API__KEYS")
        );
        assert_eq!(
            target_var("WSGATE__api__keys__file"),
            Some("WSGATE__api__keys")
        );
        assert_eq!(target_var("WSGATE__REDIS__TLS_CA_FILE"), None);
        assert_eq!(target_var("WSGATE__FILE"), None);
        assert_eq!(target_var("OTHER__X__FILE"), None);
        assert_eq!(target_var("__FILE"), None);
        assert_eq!(target_var("é__FILE"), None);
    }

    #[test]
    fn values_from_files_trimmed_and_lists_split() {
        let dir = tempfile::tempdir().unwrap();
        let url = write(
            dir.path(),
            "url",
            "  postgres://u:s3cret-password@db:5432/app\n\n",
        );
        let keys = write(
            dir.path(),
            "keys",
            "first-key-0123456789\r\n, second-key-0123456789,,\n\n third-key-0123456789 \n",
        );
        let c = Config::load_with_env(
            None,
            env(&[
                ("WSGATE__DATABASE__URL__FILE", &url),
                ("WSGATE__API__KEYS__FILE", &keys),
                ("WSGATE__AUTH__STORE", "native"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.database.url.as_deref(),
            Some("postgres://u:s3cret-password@db:5432/app")
        );
        assert_eq!(
            c.api.keys,
            vec![
                "first-key-0123456789",
                "second-key-0123456789",
                "third-key-0123456789"
            ]
        );
        // An empty list file is the empty list, as an empty variable is.
        let empty = write(dir.path(), "empty", "\n \n");
        let c =
            Config::load_with_env(None, env(&[("WSGATE__GROUPS__ALLOW__FILE", &empty)])).unwrap();
        assert!(c.groups.allow.is_empty());
    }

    #[test]
    fn a_key_given_twice_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let keys = write(dir.path(), "keys", "first-key-0123456789");
        for other in ["WSGATE__API__KEYS", "WSGATE__api__keys"] {
            let err = Config::load_with_env(
                None,
                env(&[
                    (other, "direct-key-0123456789"),
                    ("WSGATE__API__KEYS__FILE", &keys),
                ]),
            )
            .unwrap_err();
            let ConfigError::Invalid { key, message } = &err else {
                panic!("{err:?}");
            };
            assert_eq!(key, "api.keys");
            assert!(message.contains(other) && message.contains("WSGATE__API__KEYS__FILE"));
            assert!(!err.to_string().contains("first-key"));
        }
    }

    #[test]
    fn unreadable_files_name_the_variable_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope").display().to_string();
        let err = Config::load_with_env(None, env(&[("WSGATE__REDIS__URL__FILE", &missing)]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("WSGATE__REDIS__URL__FILE") && err.contains(&missing),
            "{err}"
        );
        let binary = dir.path().join("bin");
        std::fs::write(&binary, [0xff, 0xfe, b's', b'e', b'c']).unwrap();
        let binary = binary.display().to_string();
        let err = Config::load_with_env(None, env(&[("WSGATE__REDIS__URL__FILE", &binary)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not UTF-8") && !err.contains("sec"), "{err}");
        let err = Config::load_with_env(None, env(&[("WSGATE__REDIS__URL__FILE", "")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("WSGATE__REDIS__URL__FILE"), "{err}");
        let dir_path = dir.path().display().to_string();
        let err = Config::load_with_env(None, env(&[("WSGATE__REDIS__URL__FILE", &dir_path)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("WSGATE__REDIS__URL__FILE"), "{err}");
    }

    #[test]
    fn errors_about_the_values_never_show_them() {
        let dir = tempfile::tempdir().unwrap();
        // Not a number: the config crate's message may quote the value.
        let n = write(dir.path(), "n", "not-a-number-s3cret\n");
        let err =
            Config::load_with_env(None, env(&[("WSGATE__LIMITS__MAX_CONNECTIONS__FILE", &n)]))
                .unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if key == "limits.max_connections"),
            "{err:?}"
        );
        assert!(!err.to_string().contains("s3cret"), "{err}");
        // A URL the validation refuses, and a key too short.
        let url = write(dir.path(), "url", "http://user:s3cret@host\n");
        let short = write(dir.path(), "short", "s3cret\n");
        for (var, path) in [
            ("WSGATE__REDIS__URL__FILE", &url),
            ("WSGATE__API__KEYS__FILE", &short),
        ] {
            let err = Config::load_with_env(None, env(&[(var, path.as_str())]))
                .unwrap_err()
                .to_string();
            assert!(!err.contains("s3cret"), "{err}");
        }
    }
}
