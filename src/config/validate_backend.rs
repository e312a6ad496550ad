//! The checks of the sections that put the application backend in the
//! loop: idempotent publish, the outbox, occupancy and the backend's
//! authorization of groups. Called in order by [`Config::validate`].

use super::{
    Config, ConfigError, MAX_IDEMPOTENCY_CAPACITY, MAX_IDEMPOTENCY_WINDOW, MAX_OUTBOX_BATCH,
};

impl Config {
    /// `api.idempotency_*`: a window and a memory that are bounded.
    pub(super) fn validate_idempotency(&self) -> Result<(), ConfigError> {
        let window = self.api.idempotency_window;
        if window < std::time::Duration::from_secs(1) || window > MAX_IDEMPOTENCY_WINDOW {
            return Err(ConfigError::invalid(
                "api.idempotency_window",
                "must be between 1s and 7 days",
            ));
        }
        if !(1..=MAX_IDEMPOTENCY_CAPACITY).contains(&self.api.idempotency_capacity) {
            return Err(ConfigError::invalid(
                "api.idempotency_capacity",
                format!("must be between 1 and {MAX_IDEMPOTENCY_CAPACITY}"),
            ));
        }
        Ok(())
    }

    /// `[outbox]`: PostgreSQL only (it claims rows with `FOR UPDATE SKIP
    /// LOCKED` and is woken by `LISTEN/NOTIFY`), and bounded.
    pub(super) fn validate_outbox(&self) -> Result<(), ConfigError> {
        let o = &self.outbox;
        if o.enabled && !self.database_is_postgres() {
            return Err(ConfigError::invalid(
                "outbox.enabled",
                "needs a PostgreSQL database.url (the outbox claims rows with FOR UPDATE \
                 SKIP LOCKED and is woken by LISTEN/NOTIFY; SQLite has neither)",
            ));
        }
        if !(1..=MAX_OUTBOX_BATCH).contains(&o.batch) {
            return Err(ConfigError::invalid(
                "outbox.batch",
                format!("must be between 1 and {MAX_OUTBOX_BATCH}"),
            ));
        }
        let ms = std::time::Duration::from_millis;
        if o.poll_interval < ms(10) || o.poll_interval > ms(3_600_000) {
            return Err(ConfigError::invalid(
                "outbox.poll_interval",
                "must be between 10ms and 1h",
            ));
        }
        if o.batch_timeout < ms(100) || o.batch_timeout > ms(600_000) {
            return Err(ConfigError::invalid(
                "outbox.batch_timeout",
                "must be between 100ms and 10m",
            ));
        }
        Ok(())
    }

    /// `[occupancy]`: a stream key Redis accepts, bounded queues, and a
    /// webhook only with a secret (unsigned events are never sent).
    pub(super) fn validate_occupancy(&self) -> Result<(), ConfigError> {
        let o = &self.occupancy;
        if o.stream.len() > 128
            || !o
                .stream
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
        {
            return Err(ConfigError::invalid(
                "occupancy.stream",
                "at most 128 printable ASCII characters, without spaces or braces",
            ));
        }
        if !(1..=10_000_000).contains(&o.stream_maxlen) {
            return Err(ConfigError::invalid(
                "occupancy.stream_maxlen",
                "must be between 1 and 10000000",
            ));
        }
        if !(1..=20).contains(&o.webhook_attempts) {
            return Err(ConfigError::invalid(
                "occupancy.webhook_attempts",
                "must be between 1 and 20",
            ));
        }
        if !(1..=100_000).contains(&o.queue) {
            return Err(ConfigError::invalid(
                "occupancy.queue",
                "must be between 1 and 100000",
            ));
        }
        if o.webhook_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "occupancy.webhook_timeout",
                "must be above zero",
            ));
        }
        if let Some(raw) = &o.webhook_url {
            let url = url::Url::parse(raw).map_err(|e| {
                ConfigError::invalid("occupancy.webhook_url", format!("not a URL: {e}"))
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(ConfigError::invalid(
                    "occupancy.webhook_url",
                    "must be an http:// or https:// URL with a host",
                ));
            }
            match &o.webhook_secret {
                Some(secret) if secret.len() >= 16 => {}
                Some(_) => {
                    return Err(ConfigError::invalid(
                        "occupancy.webhook_secret",
                        "must be at least 16 bytes",
                    ));
                }
                None => {
                    return Err(ConfigError::invalid(
                        "occupancy.webhook_secret",
                        "required with occupancy.webhook_url (events are always signed)",
                    ));
                }
            }
        }
        Ok(())
    }

    /// `groups.authorize` needs a way to say yes: the hook or grants. The
    /// hook is signed or keyed (never called bare), and secrets are long.
    pub(super) fn validate_authorize(&self) -> Result<(), ConfigError> {
        let a = &self.authorize;
        if !self.groups.authorize.is_empty() && a.hook_url.is_none() && a.grant_secret.is_none() {
            return Err(ConfigError::invalid(
                "groups.authorize",
                "needs authorize.hook_url or authorize.grant_secret (or both)",
            ));
        }
        if let Some(url) = &a.hook_url {
            if !(url.starts_with("https://") || url.starts_with("http://"))
                || url::Url::parse(url).is_err()
            {
                return Err(ConfigError::invalid(
                    "authorize.hook_url",
                    "must be an http:// or https:// URL",
                ));
            }
            if a.hook_secret.is_none() && a.hook_api_key.is_none() {
                return Err(ConfigError::invalid(
                    "authorize.hook_url",
                    "needs authorize.hook_secret or authorize.hook_api_key, so the backend \
                     can tell wsgate's calls from anyone's",
                ));
            }
            if a.hook_timeout.is_zero() {
                return Err(ConfigError::invalid(
                    "authorize.hook_timeout",
                    "must be more than 0",
                ));
            }
        }
        for (key, secret) in [
            ("authorize.hook_secret", &a.hook_secret),
            ("authorize.grant_secret", &a.grant_secret),
        ] {
            if secret.as_ref().is_some_and(|s| s.len() < 32) {
                return Err(ConfigError::invalid(key, "must be at least 32 bytes"));
            }
        }
        if a.hook_api_key
            .as_ref()
            .is_some_and(|k| k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError::invalid(
                "authorize.hook_api_key",
                "must be non-empty printable ASCII without spaces",
            ));
        }
        if a.cache_size == 0 && (!a.allow_ttl.is_zero() || !a.deny_ttl.is_zero()) {
            return Err(ConfigError::invalid(
                "authorize.cache_size",
                "must be more than 0 (set authorize.allow_ttl and deny_ttl to 0s for no cache)",
            ));
        }
        if a.grant_max_lifetime.is_zero() {
            return Err(ConfigError::invalid(
                "authorize.grant_max_lifetime",
                "must be more than 0",
            ));
        }
        Ok(())
    }
}
