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
    "groups.snapshot",
    "groups.authorize",
    "history.groups",
    "redis.shards",
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
        let mut config: Config = raw.try_deserialize().map_err(describe)?;
        // `redis.url` is the first shard when only the shards are given.
        if config.redis.url.is_none() {
            config.redis.url = config.redis.shards.first().cloned();
        }
        config.validate()?;
        Ok(config)
    }

    /// The configuration as TOML with secrets masked, for `config check`.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        masked.api.keys = masked.api.keys.iter().map(|_| "********".into()).collect();
        masked.database.url = masked.database.url.as_deref().map(mask_url);
        masked.redis.url = masked.redis.url.as_deref().map(mask_url);
        masked.redis.shards = masked.redis.shards.iter().map(|u| mask_url(u)).collect();
        masked.auth.jwt_secret = masked.auth.jwt_secret.as_ref().map(|_| "********".into());
        let a = &mut masked.authorize;
        for secret in [&mut a.hook_secret, &mut a.hook_api_key, &mut a.grant_secret] {
            *secret = secret.as_ref().map(|_| "********".into());
        }
        masked.auth.jwt_jwks_url = masked.auth.jwt_jwks_url.as_deref().map(mask_url);
        let occupancy = &mut masked.occupancy;
        occupancy.webhook_secret = occupancy.webhook_secret.as_ref().map(|_| "********".into());
        occupancy.webhook_url = occupancy.webhook_url.as_deref().map(mask_url);
        masked.authorize.hook_url = masked.authorize.hook_url.as_deref().map(mask_url);
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

/// Query parameters that carry secrets in the URLs wsgate reads (libpq's
/// and sqlx's `password`, `sslpassword`; anything named like a token or key).
const SECRET_PARAMS: &[&str] = &["password", "sslpassword", "pass", "token", "secret", "key"];

/// Hides every secret of a URL: the password of `scheme://user:password@…`
/// and the value of any query parameter named like one (`?password=…`,
/// which sqlx honours). A string that does not parse as a URL is hidden
/// whole unless it plainly holds no secret (no `@`, no `=`).
pub fn mask_url(raw: &str) -> String {
    const MASK: &str = "********";
    let Ok(mut url) = url::Url::parse(raw) else {
        return if raw.contains('@') || raw.contains('=') {
            MASK.to_string()
        } else {
            raw.to_string()
        };
    };
    if url.password().is_some() {
        let _ = url.set_password(Some(MASK));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = SECRET_PARAMS
                    .iter()
                    .any(|s| k.to_ascii_lowercase().contains(s));
                (
                    k.into_owned(),
                    if secret { MASK.into() } else { v.into_owned() },
                )
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
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
            // Items are trimmed (`"k1, k2"` is two keys, not "k1" and " k2");
            // an empty item (`"k1,,k2"`, a trailing comma) is refused.
            let mut items = Vec::new();
            if !value.trim().is_empty() {
                for item in value.split(',').map(str::trim) {
                    if item.is_empty() {
                        return Err(ConfigError::invalid(&key, "empty item in the list"));
                    }
                    items.push(config::Value::new(Some(&origin), item.to_string()));
                }
            }
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
    fn authorize_needs_a_way_to_say_yes_and_long_secrets() {
        let secret = "s".repeat(32);
        let hook = "http://127.0.0.1:9/hook";
        for (pairs, key) in [
            (
                vec![("WSGATE__GROUPS__AUTHORIZE", "doc.*")],
                "groups.authorize",
            ),
            (
                vec![("WSGATE__AUTHORIZE__HOOK_URL", hook)],
                "authorize.hook_url",
            ),
            (
                vec![
                    ("WSGATE__AUTHORIZE__HOOK_URL", "ftp://x"),
                    ("WSGATE__AUTHORIZE__HOOK_SECRET", secret.as_str()),
                ],
                "authorize.hook_url",
            ),
            (
                vec![
                    ("WSGATE__AUTHORIZE__HOOK_URL", hook),
                    ("WSGATE__AUTHORIZE__HOOK_SECRET", "short"),
                ],
                "authorize.hook_secret",
            ),
            (
                vec![("WSGATE__AUTHORIZE__GRANT_SECRET", "short")],
                "authorize.grant_secret",
            ),
            (
                vec![("WSGATE__AUTHORIZE__GRANT_MAX_LIFETIME", "0s")],
                "authorize.grant_max_lifetime",
            ),
            (
                vec![("WSGATE__GROUPS__AUTHORIZE", "a b")],
                "groups.authorize",
            ),
        ] {
            let err = Config::load_with_env(None, env(&pairs))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{pairs:?}: {err}");
        }
        let c = Config::load_with_env(
            None,
            env(&[
                ("WSGATE__GROUPS__AUTHORIZE", "doc.*,team.{user_id}.*"),
                ("WSGATE__AUTHORIZE__HOOK_URL", hook),
                ("WSGATE__AUTHORIZE__HOOK_API_KEY", "k"),
                ("WSGATE__AUTHORIZE__HOOK_SECRET", secret.as_str()),
            ]),
        )
        .unwrap();
        let shown = c.to_masked_toml();
        assert!(!shown.contains(&secret), "{shown}");
        assert!(shown.contains("hook_api_key = \"********\""), "{shown}");
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
            (
                "WSGATE__GROUPS__SNAPSHOT",
                "market.*,a b",
                "groups.snapshot",
            ),
            ("WSGATE__GROUPS__SNAPSHOT_TTL", "0s", "groups.snapshot_ttl"),
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

    /// `redis.shards` from the environment: `redis.url` is the first, the
    /// passwords are masked, and what cannot work is refused by name.
    #[test]
    fn redis_shards() {
        let c = Config::load_with_env(
            None,
            env(&[(
                "WSGATE__REDIS__SHARDS",
                "redis://:pw1@r1:6379, rediss://:pw2@r2:6380",
            )]),
        )
        .unwrap();
        assert_eq!(
            c.redis.shards,
            ["redis://:pw1@r1:6379", "rediss://:pw2@r2:6380"]
        );
        assert_eq!(c.redis.url.as_deref(), Some("redis://:pw1@r1:6379"));
        let shown = c.to_masked_toml();
        assert!(!shown.contains("pw1") && !shown.contains("pw2"), "{shown}");
        for (vars, key) in [
            (
                vec![("WSGATE__REDIS__SHARDS", "redis://a,redis://a")],
                "redis.shards",
            ),
            (
                vec![("WSGATE__REDIS__SHARDS", "redis://a,redis-cluster://b")],
                "redis.shards",
            ),
            (
                vec![("WSGATE__REDIS__SHARDS", "redis://a,http://b")],
                "redis.shards",
            ),
            (
                vec![
                    ("WSGATE__REDIS__SHARDS", "redis://a,redis://b"),
                    ("WSGATE__REDIS__CLUSTER", "true"),
                ],
                "redis.shards",
            ),
            (
                vec![
                    ("WSGATE__REDIS__SHARDS", "redis://a,redis://b"),
                    ("WSGATE__REDIS__URL", "redis://b"),
                ],
                "redis.url",
            ),
        ] {
            let err = Config::load_with_env(None, env(&vars)).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { key: named, .. } if named == key),
                "{vars:?}: {err:?}"
            );
        }
        let many: Vec<String> = (0..65).map(|i| format!("redis://h{i}")).collect();
        let err = Config::load_with_env(None, env(&[("WSGATE__REDIS__SHARDS", &many.join(","))]))
            .unwrap_err();
        assert!(err.to_string().contains("at most 64"), "{err}");
    }

    /// L6: `WSGATE__API__KEYS="k1, k2"` kept the space, so the second key
    /// never matched.
    #[test]
    fn env_list_items_are_trimmed() {
        let c = Config::load_with_env(
            None,
            env(&[(
                "WSGATE__API__KEYS",
                " first-key-0123456789 , second-key-0123456789",
            )]),
        )
        .unwrap();
        assert_eq!(
            c.api.keys,
            vec!["first-key-0123456789", "second-key-0123456789"]
        );
        for bad in [
            "k-0123456789abcdef,,k-0123456789abcdef",
            "k-0123456789abcdef,",
        ] {
            let e = Config::load_with_env(None, env(&[("WSGATE__API__KEYS", bad)])).unwrap_err();
            assert!(e.to_string().contains("api.keys"), "{e}");
        }
        // In a file, a key with spaces around it is refused rather than
        // kept unmatchable.
        let mut c = Config::default();
        c.api.keys = vec![" padded-key-0123456789".into()];
        assert!(c.validate().unwrap_err().to_string().contains("api.keys"));
    }

    /// L4: a password in the query (`?password=…`, which sqlx honours) was
    /// printed by `config check`.
    #[test]
    fn masks_secrets_in_the_query_too() {
        let masked =
            mask_url("postgres://u@db:5432/x?sslmode=verify-full&password=hunter2&SSLPassword=k3y");
        assert!(
            !masked.contains("hunter2") && !masked.contains("k3y"),
            "{masked}"
        );
        assert!(masked.contains("sslmode=verify-full"), "{masked}");
        let both = mask_url("rediss://:pw1@r:6380/0?password=pw2");
        assert!(!both.contains("pw1") && !both.contains("pw2"), "{both}");
        assert!(!mask_url("not a url password=x").contains('x'));
        let mut config = Config::default();
        config.database.url = Some("postgres://u@db/x?password=hunter2".into());
        assert!(!config.to_masked_toml().contains("hunter2"));
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
