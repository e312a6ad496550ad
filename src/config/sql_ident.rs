//! SQL identifiers taken from the configuration (the `auth.django_user_*`
//! keys): checked against a strict grammar and always double-quoted, so a
//! value can only ever name a table or a column, never add SQL.

use super::{AuthConfig, ConfigError};

/// Longest identifier part PostgreSQL keeps (NAMEDATALEN - 1 bytes).
const MAX_PART: usize = 63;

/// `part` double-quoted, if it is a plain identifier: an ASCII letter or
/// `_`, then letters, digits or `_`, at most 63 bytes.
fn quote_part(part: &str) -> Option<String> {
    let mut chars = part.chars();
    let first = chars.next()?;
    let plain = (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && part.len() <= MAX_PART;
    // The grammar admits no `"`; doubling it anyway keeps the quoting
    // correct on its own.
    plain.then(|| format!("\"{}\"", part.replace('"', "\"\"")))
}

/// A table name, optionally schema-qualified (`schema.table`), quoted.
pub fn quote_table(name: &str) -> Result<String, String> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 {
        return Err(format!(
            "{name:?} is not a table name: at most one '.' (schema.table)"
        ));
    }
    parts
        .iter()
        .map(|p| quote_part(p))
        .collect::<Option<Vec<_>>>()
        .map(|quoted| quoted.join("."))
        .ok_or_else(|| not_identifier(name, "a table name (or schema.table)"))
}

/// A column name, quoted.
pub fn quote_column(name: &str) -> Result<String, String> {
    quote_part(name).ok_or_else(|| not_identifier(name, "a column name"))
}

fn not_identifier(name: &str, what: &str) -> String {
    let shown: String = name.chars().take(80).collect();
    format!(
        "{shown:?} is not {what}: use ASCII letters, digits and '_' (not first), \
         at most {MAX_PART} bytes; it is quoted, so case matters as in the database"
    )
}

/// The `django` store's user table and columns (`AUTH_USER_MODEL`), each
/// already quoted for SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DjangoUser {
    /// `"auth_user"` or `"schema"."table"`.
    pub table: String,
    /// The primary key column (`authtoken_token.user_id` refers to it).
    pub pk: String,
    /// The boolean "is active" column.
    pub active: String,
}

impl AuthConfig {
    /// The `auth.django_user_*` keys, checked and quoted.
    pub fn django_user(&self) -> Result<DjangoUser, ConfigError> {
        Ok(DjangoUser {
            table: quote_table(&self.django_user_table)
                .map_err(|m| ConfigError::invalid("auth.django_user_table", m))?,
            pk: quote_column(&self.django_user_pk)
                .map_err(|m| ConfigError::invalid("auth.django_user_pk", m))?,
            active: quote_column(&self.django_user_active)
                .map_err(|m| ConfigError::invalid("auth.django_user_active", m))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_quoted() {
        assert_eq!(quote_table("auth_user").unwrap(), "\"auth_user\"");
        assert_eq!(
            quote_table("accounts.Member_2").unwrap(),
            "\"accounts\".\"Member_2\""
        );
        assert_eq!(quote_table("_x").unwrap(), "\"_x\"");
        assert_eq!(quote_column("is_active").unwrap(), "\"is_active\"");
        assert_eq!(
            quote_column("user").unwrap(),
            "\"user\"",
            "reserved words are fine quoted"
        );
        assert_eq!(quote_column(&"a".repeat(63)).unwrap().len(), 65);
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "auth_user; DROP TABLE x",
            "auth_user u",
            "\"auth_user\"",
            "a\"b",
            "1user",
            "a.b.c",
            ".a",
            "a.",
            "a..b",
            "a-b",
            "a b",
            "a$b",
            "użytkownik",
            "auth_user--",
            "auth_user\0",
            &"a".repeat(64),
        ] {
            assert!(quote_table(bad).is_err(), "table {bad:?} accepted");
        }
        for bad in [
            "",
            "a.b",
            "is_active OR true",
            "id::text",
            "x)",
            &"a".repeat(64),
        ] {
            assert!(quote_column(bad).is_err(), "column {bad:?} accepted");
        }
        let err = quote_table("a;b").unwrap_err();
        assert!(err.contains("\"a;b\" is not a table name"), "{err}");
    }

    #[test]
    fn config_errors_name_the_key() {
        let mut auth = AuthConfig::default();
        assert_eq!(
            auth.django_user().unwrap(),
            DjangoUser {
                table: "\"auth_user\"".into(),
                pk: "\"id\"".into(),
                active: "\"is_active\"".into(),
            }
        );
        auth.django_user_active = "is_active OR true".into();
        let err = auth.django_user().unwrap_err().to_string();
        assert!(err.contains("auth.django_user_active"), "{err}");
        auth.django_user_active = "is_active".into();
        auth.django_user_pk = "id; --".into();
        let err = auth.django_user().unwrap_err().to_string();
        assert!(err.contains("auth.django_user_pk"), "{err}");
        auth.django_user_pk = "id".into();
        auth.django_user_table = "x.y.z".into();
        let err = auth.django_user().unwrap_err().to_string();
        assert!(err.contains("auth.django_user_table"), "{err}");
    }
}
