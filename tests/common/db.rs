//! Throwaway databases in the shared Postgres, and what tests put in them.

use sha2::Digest;

/// Postgres the machine runs (trust auth); tests make their own databases in it.
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A database created for one test, dropped (`WITH (FORCE)`, whoever is
/// still connected) when this value is dropped, also when the test panics.
pub struct PgDb {
    pub name: String,
    pub url: String,
    dropped: bool,
}

impl PgDb {
    pub async fn create() -> PgDb {
        let name = format!("wsgate_t_{}", hex::encode(rand::random::<[u8; 6]>()));
        let admin = sqlx::PgPool::connect(PG_ADMIN_URL)
            .await
            .expect("Postgres at 127.0.0.1:5432 (see README: services)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        PgDb {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
            dropped: false,
        }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url)
            .await
            .expect("connect test db")
    }

    /// Drops the database now, under the pools still connected to it: for
    /// tests about a database that goes away. Cleaning up after a test is
    /// the guard's job, not this.
    pub async fn drop_db(mut self) {
        drop_database(&self.name).await;
        self.dropped = true;
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let name = std::mem::take(&mut self.name);
        // Drop may run inside the test's runtime: use a thread of its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(drop_database(&name))
        })
        .join();
    }
}

async fn drop_database(name: &str) {
    let admin = sqlx::PgPool::connect(PG_ADMIN_URL).await.expect("admin");
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
    admin.close().await;
}

/// The digest a token is stored under: SHA-256, lowercase hex.
pub fn digest(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Creates Django's `auth_user` and DRF's `authtoken_token`, as their
/// migrations make them on PostgreSQL; no rows, no revoke trigger.
pub async fn create_django_tables(pool: &sqlx::PgPool) {
    for sql in [
        "CREATE TABLE auth_user (id serial PRIMARY KEY, password varchar(128) NOT NULL DEFAULT '', \
         last_login timestamptz NULL, is_superuser boolean NOT NULL DEFAULT false, \
         username varchar(150) NOT NULL UNIQUE, first_name varchar(150) NOT NULL DEFAULT '', \
         last_name varchar(150) NOT NULL DEFAULT '', email varchar(254) NOT NULL DEFAULT '', \
         is_staff boolean NOT NULL DEFAULT false, is_active boolean NOT NULL DEFAULT true, \
         date_joined timestamptz NOT NULL DEFAULT now())",
        "CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, created timestamptz NOT NULL DEFAULT now(), \
         user_id integer NOT NULL UNIQUE REFERENCES auth_user (id) DEFERRABLE INITIALLY DEFERRED)",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap();
    }
}
