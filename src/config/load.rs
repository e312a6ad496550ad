//! Reading the layers: defaults, the TOML file, then `WSGATE__SECTION__KEY`
//! variables; and the masked rendering `wsgate config check` prints.

use std::path::Path;

use super::{Config, ConfigError};

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "server.allowed_origins",
    "server.trusted_proxies",
    "api.keys",
    "groups.allow",
    "groups.auto_join",
    "groups.client_publish",
    "history.groups",
];

impl Config {
    /// Loads defaults, then `file` (if given), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Config::load`], with the environment given explicitly (tests).
    /// `WSGATE__SECTION__KEY__FILE` variables are read first ([`super::files`]).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let env = super::files::FileValues::read(env, LIST_KEYS)?;
        Self::load_layers(file, env.vars.clone()).map_err(|e| env.scrub(e))
    }

    fn load_layers(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            let source = config::File::from(file).format(config::FileFormat::Toml);
            let table = config::Source::collect(&source).map_err(describe)?;
            // The config crate reads a top-level key as a path, where
            // `"a[99999999999]"` allocates that many entries: only plain
            // names get through.
            if let Some(key) = table.keys().find(|k| !is_plain_key(k)) {
                let key = if key.is_empty() { "\"\"" } else { key };
                return Err(ConfigError::invalid(key, "not a configuration key"));
            }
            builder = builder.add_source(Collected(table));
        }
        builder = builder.add_source(Collected(env_values(env)?));
        let raw = builder.build().map_err(describe)?;
        let config: Config = raw.try_deserialize().map_err(describe)?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as TOML with secrets masked, for `config check`.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        masked.api.keys = masked.api.keys.iter().map(|_| "********".into()).collect();
        masked.database.url = masked.database.url.as_deref().map(mask_url);
        masked.redis.url = masked.redis.url.as_deref().map(mask_url);
        if masked.server.node_id.is_none() {
            masked.server.node_id = Some(self.node_id());
        }
        toml_string(&masked)
    }
}

fn toml_string(config: &Config) -> String {
    // `config` brings a TOML serializer with its `toml` feature.
    toml::to_string_pretty(config).unwrap_or_else(|e| format!("# cannot render: {e}"))
}

/// Hides the password of `scheme://user:password@host/...`.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:********@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_string(),
    }
}

/// Configuration values gathered beforehand, handed to the config crate.
#[derive(Debug, Clone)]
struct Collected(config::Map<String, config::Value>);

impl config::Source for Collected {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

/// A section or field name: letters, digits, `_` and `-`.
fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `WSGATE__SECTION__KEY=value` as `section.key`. Values stay the strings
/// they are (the field's type parses them, so `007` stays `007` in a string
/// field and `1.5` is no count); list keys split on `,`, an empty value
/// being the empty list. A variable whose name is not such a key is an
/// error that names it.
fn env_values(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<config::Map<String, config::Value>, ConfigError> {
    let origin = "the environment".to_string();
    let mut values = config::Map::new();
    for (var, value) in env {
        let Some(name) = var.strip_prefix("WSGATE__") else {
            continue;
        };
        let segments: Vec<String> = name.split("__").map(str::to_lowercase).collect();
        if !segments.iter().all(|s| is_plain_key(s)) {
            return Err(ConfigError::invalid(
                &var,
                "not a configuration key (WSGATE__SECTION__KEY: letters, digits and _)",
            ));
        }
        let key = segments.join(".");
        let kind = if LIST_KEYS.contains(&key.as_str()) {
            let items = value
                .split(',')
                .filter(|_| !value.is_empty())
                .map(|item| config::Value::new(Some(&origin), item.to_string()))
                .collect::<Vec<_>>();
            config::ValueKind::Array(items)
        } else {
            config::ValueKind::String(value)
        };
        values.insert(key, config::Value::new(Some(&origin), kind));
    }
    Ok(values)
}

/// Turns the config crate's errors into one line that names the key.
fn describe(e: config::ConfigError) -> ConfigError {
    let text = e.to_string();
    // The config crate says "... for key `auth.timeout`" or names the key
    // after "unknown field"; keep its words and make the key easy to spot.
    if let Some(key) = text
        .split("for key `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
    {
        let mut key = key.trim_start_matches("WSGATE.").to_lowercase();
        let message = text.split(" for key `").next().unwrap_or(&text).to_string();
        // "unknown field `x`" inside section `s`: the key is `s.x`.
        if let Some(field) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
        {
            key = format!("{key}.{field}");
        }
        return ConfigError::Invalid { key, message };
    }
    // An unknown section: the config crate names no key, the field is it.
    if let Some(field) = text
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .filter(|field| !field.is_empty())
    {
        return ConfigError::Invalid {
            key: field.to_lowercase(),
            message: text.clone(),
        };
    }
    ConfigError::Load(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let c = Config::load_with_env(None, env(&[])).unwrap();
        assert_eq!(c.server.listen.port(), 8080);
        assert_eq!(c.auth.timeout, Duration::from_secs(5));
        assert_eq!(c.groups.auto_join, vec!["user.{user_id}"]);
        assert!(c.is_embedded());
    }

    #[test]
    fn env_overrides_and_lists() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("WSGATE__REDIS__URL", "redis://127.0.0.1:6379"),
                ("WSGATE__AUTH__TIMEOUT", "250ms"),
                ("WSGATE__GROUPS__ALLOW", "market.*,user.{user_id}"),
                ("WSGATE__LIMITS__MAX_CONNECTIONS", "10"),
            ]),
        )
        .unwrap();
        assert_eq!(c.redis.url.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(c.auth.timeout, Duration::from_millis(250));
        assert_eq!(c.groups.allow, vec!["market.*", "user.{user_id}"]);
        assert_eq!(c.limits.max_connections, 10);
    }

    #[test]
    fn errors_name_the_key() {
        for (k, v, key) in [
            ("WSGATE__AUTH__TIMEOUT", "five", "auth.timeout"),
            (
                "WSGATE__LIMITS__MAX_CONNECTIONS",
                "0",
                "limits.max_connections",
            ),
            ("WSGATE__REDIS__URL", "http://x", "redis.url"),
            ("WSGATE__SERVER__LISTEN", "nowhere", "server.listen"),
            ("WSGATE__AUTH__STORE", "ldap", "auth.store"),
        ] {
            let err = Config::load_with_env(None, env(&[(k, v)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{k}={v}: {err}");
        }
    }

    #[test]
    fn masks_secrets() {
        assert_eq!(
            mask_url("postgres://u:secret@db:5432/x"),
            "postgres://u:********@db:5432/x"
        );
        assert_eq!(mask_url("redis://h:6379"), "redis://h:6379");
    }

    /// Inputs found by the property tests and fuzzing (tests/proptest_protocol.rs).
    #[test]
    fn odd_inputs_are_errors_that_name_the_key() {
        // Environment values are not re-typed: a string field keeps them.
        let c = Config::load_with_env(
            None,
            env(&[
                ("WSGATE__SERVER__NODE_ID", "007"),
                ("WSGATE__REDIS__PREFIX", "1e3"),
                ("WSGATE__API__KEYS", "00001234567890123456789"),
                ("WSGATE__GROUPS__AUTO_JOIN", ""),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.node_id.as_deref(), Some("007"));
        assert_eq!(c.redis.prefix, "1e3");
        assert_eq!(c.api.keys, vec!["00001234567890123456789"]);
        assert!(c.groups.auto_join.is_empty());
        for (k, v, key) in [
            (
                "WSGATE__LIMITS__MAX_CONNECTIONS",
                "1.5",
                "limits.max_connections",
            ),
            (
                "WSGATE__LIMITS__MAX_CONNECTIONS",
                "1e400",
                "limits.max_connections",
            ),
            (
                "WSGATE__LIMITS__OUTBOUND_QUEUE",
                "18446744073709551615",
                "limits.outbound_queue",
            ),
            (
                "WSGATE__SERVER__PING_INTERVAL",
                "300000000000years",
                "server.ping_interval",
            ),
            ("WSGATE__DRAIN__GRACE", "400days", "drain.grace"),
            ("WSGATE__SERVER__NODE_ID", " ", "server.node_id"),
            ("WSGATE__FOO", "1", "foo"),
            ("WSGATE__", "1", "WSGATE__"),
            ("WSGATE__SERVER__", "1", "WSGATE__SERVER__"),
            // Read as a path, this would allocate 10^11 entries.
            (
                "WSGATE__SERVER__ALLOWED_ORIGINS[99999999999]",
                "x",
                "ALLOWED_ORIGINS[99999999999]",
            ),
        ] {
            let err = Config::load_with_env(None, env(&[(k, v)])).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { key: named, .. } if named.contains(key)),
                "{k}={v}: {err:?}"
            );
        }
        let dir = std::env::temp_dir().join(format!("wsgate-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (body, key) in [
            ("\"server[99999999999]\" = 1\n", "server[99999999999]"),
            ("foo = 1\n", "foo"),
            ("[\"\"]\n", "\"\""),
        ] {
            let file = dir.join("c.toml");
            std::fs::write(&file, body).unwrap();
            let err = Config::load_with_env(Some(&file), env(&[])).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { key: named, .. } if named == key),
                "{body}: {err:?}"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
