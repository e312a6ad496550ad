//! `compat.channels_redis`: what Django Channels' real `channels_redis`
//! (`RedisPubSubChannelLayer.group_send`) publishes reaches wsgate's
//! subscribed, authenticated sockets, and the example Django project works
//! against a real node.
//!
//! The Python side runs in the virtualenv made by
//! `scripts/install-python-tools.sh` (`$WSGATE_PYENV`, else
//! `~/.cache/wsgate-pyenv`); without it these tests fail, naming the script.
//! Each test uses its own Redis key prefix and channel-layer prefix on the
//! shared Redis (or its own `redis-server`), and its own Postgres database.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::redis_servers::{RedisProc, redis_cli};
use common::{API_KEY, Client, PgDb, RedisPrefix, SHARED_REDIS, code, spawn, test_config};
use fred::prelude::{ClientLike, PubsubInterface};
use serde_json::{Value, json};
use wsgate::config::{Config, StoreKind};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The virtualenv's python; panics (never skips) when it is missing.
fn python() -> PathBuf {
    let venv = std::env::var_os("WSGATE_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/wsgate-pyenv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "the Python virtualenv with channels_redis is missing ({}): \
         run `bash scripts/install-python-tools.sh` first",
        python.display()
    );
    python
}

/// Runs the venv's python with `args` in `dir` and `env`; returns stdout,
/// failing the test on a non-zero exit.
async fn run_python(
    dir: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<String>,
) -> String {
    let python = python();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let dir = dir.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new(&python)
            .args(&args)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .envs(env)
            .current_dir(&dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start python");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().expect("python runs");
        assert!(
            out.status.success(),
            "python {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    })
    .await
    .unwrap()
}

/// `channel_layer.group_send(group, message)` for each pair, in order,
/// through the real channels_redis.
async fn group_send(redis_url: &str, layer_prefix: &str, messages: Value) {
    let n = messages.as_array().unwrap().len();
    let out = run_python(
        REPO,
        &[
            "tests/compat/group_send.py",
            "--redis",
            redis_url,
            "--prefix",
            layer_prefix,
        ],
        &[],
        Some(messages.to_string()),
    )
    .await;
    assert_eq!(out.trim(), format!("sent {n}"));
}

/// A node on `redis_url` with compat on, its own prefixes (their keys on
/// the shared Redis go when the returned guards drop); no auth timeout to
/// race with the silence checks.
fn compat_config(dir: &Path, redis_url: &str) -> (Config, String, [RedisPrefix; 2]) {
    let keys = [RedisPrefix::random(), RedisPrefix::random()];
    let mut c = test_config(dir);
    c.redis.url = Some(redis_url.into());
    c.redis.prefix = keys[0].to_string();
    c.compat.channels_redis = true;
    c.compat.channels_prefix = format!("{}asgi", keys[1]);
    c.auth.timeout = Duration::from_secs(60);
    let layer_prefix = c.compat.channels_prefix.clone();
    (c, layer_prefix, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_send_reaches_authenticated_members_only() {
    let dir = tempfile::tempdir().unwrap();
    let (config, layer, _keys) = compat_config(dir.path(), SHARED_REDIS);
    let node = spawn(config.clone()).await;
    let (mut member, _) = Client::authed(&node.ws_url(), &node.issue_token("1").await).await;
    member.subscribe("market.AAPL").await;
    let (mut elsewhere, _) = Client::authed(&node.ws_url(), &node.issue_token("2").await).await;
    elsewhere.subscribe("market.MSFT").await;
    // Upgraded, never authenticated: must receive nothing.
    let mut pending = Client::connect(&node.ws_url()).await;

    let payload = json!({
        "symbol": "AAPL",
        "price": 189.25,
        "step": 0.1,
        "volume": 1200,
        "big": 1_099_511_627_776_u64,
        "neg": -42,
        "ok": true,
        "none": null,
        "tags": ["a", "b"],
        "nested": {"bid": 189.2, "ask": [1, 2.5], "empty": {}},
        "text": "été – 株 \"quoted\"",
    });
    let mut message = payload.clone();
    message["type"] = json!("market.tick");
    group_send(
        SHARED_REDIS,
        &layer,
        json!([
            // Not a wsgate group name (space, '!'): dropped.
            ["bad group!", {"type": "market.tick", "p": 1}],
            ["market.AAPL", message],
        ]),
    )
    .await;
    assert_eq!(
        member.recv_json().await,
        json!({"type": "message", "group": "market.AAPL", "data": payload}),
        "the member receives the group_send message, without its type"
    );
    elsewhere.expect_silence(Duration::from_millis(300)).await;
    pending.expect_silence(Duration::from_millis(300)).await;
    // Authenticating later does not replay anything either.
    pending
        .send_json(json!({"type": "auth", "token": node.issue_token("3").await}))
        .await;
    assert_eq!(pending.recv_json().await["type"], "welcome");
    pending.expect_silence(Duration::from_millis(300)).await;
    member.expect_silence(Duration::from_millis(100)).await;

    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_key_delivers_only_that_value() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, layer, _keys) = compat_config(dir.path(), SHARED_REDIS);
    config.compat.payload_key = "message".into();
    let node = spawn(config.clone()).await;
    let (mut c, _) = Client::authed(&node.ws_url(), &node.issue_token("7").await).await;
    c.subscribe("chat.room-1").await;

    group_send(
        SHARED_REDIS,
        &layer,
        json!([
            ["chat.room-1", {"type": "chat.message", "message": {"text": "hi", "n": 1}, "sender": "x"}],
            // No "message" key: dropped.
            ["chat.room-1", {"type": "chat.message", "text": "lost"}],
            ["chat.room-1", {"type": "chat.message", "message": "plain string"}],
        ]),
    )
    .await;
    assert_eq!(
        c.recv_json().await,
        json!({"type": "message", "group": "chat.room-1", "data": {"text": "hi", "n": 1}})
    );
    assert_eq!(
        c.recv_json().await,
        json!({"type": "message", "group": "chat.room-1", "data": "plain string"})
    );
    c.expect_silence(Duration::from_millis(300)).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_does_not_break_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let (config, layer, _keys) = compat_config(dir.path(), SHARED_REDIS);
    let node = spawn(config.clone()).await;
    let (mut c, _) = Client::authed(&node.ws_url(), &node.issue_token("9").await).await;
    c.subscribe("market.X").await;

    let publisher = wsgate::redis_client::client(&config.redis).unwrap();
    wsgate::redis_client::connect(&publisher, Duration::from_secs(5))
        .await
        .unwrap();
    let channel = format!("{layer}__group__market.X");
    let mut deep = vec![0x81, 0xa1, b'a'];
    deep.extend(std::iter::repeat_n(0x91, 100_000));
    deep.push(0xc0);
    let garbage: Vec<Vec<u8>> = vec![
        b"not msgpack at all".to_vec(),
        vec![0xc1],                               // a marker MessagePack never uses
        vec![0xdf, 0xff, 0xff, 0xff, 0xff],       // a map "of 4 billion entries", truncated
        vec![0x81, 0xa1, b'a'],                   // truncated map
        vec![0x92, 0x01, 0x02],                   // an array, not a map
        vec![0x81, 0xa1, b'a', 0x01, 0x00],       // bytes after the value
        vec![0x81, 0xa1, b'a', 0xc4, 0x01, 0xff], // bin: no JSON for it
        vec![0x81, 0xa1, b'a', 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0], // NaN
        vec![0x81, 0xa1, b'a', 0xa2, 0xff, 0xfe], // a str that is not UTF-8
        vec![0x81, 0xa1, b'a', 0xd4, 0x01, 0x00], // an ext type
        deep,                                     // nesting far past the limit
        vec![0u8; (1 << 20) + 1],                 // over the size limit
        Vec::new(),                               // empty
    ];
    for body in garbage {
        let receivers: i64 = publisher.publish(&channel, body).await.unwrap();
        assert!(receivers >= 1, "the node holds the channel layer's pattern");
    }
    // A well-formed message on a channel whose group is not a wsgate name.
    let _: i64 = publisher
        .publish(format!("{layer}__group__{}", "x".repeat(129)), vec![0x80u8])
        .await
        .unwrap();
    let _ = publisher.quit().await;

    group_send(
        SHARED_REDIS,
        &layer,
        json!([["market.X", {"type": "t", "after": "garbage"}]]),
    )
    .await;
    assert_eq!(
        c.recv_json().await,
        json!({"type": "message", "group": "market.X", "data": {"after": "garbage"}}),
        "the first frame is the valid message: every bad one was dropped"
    );
    c.expect_silence(Duration::from_millis(200)).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribes_after_a_redis_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisProc::start(dir.path());
    let (config, layer, _keys) = compat_config(dir.path(), &redis.url());
    let node = spawn(config.clone()).await;
    let (mut c, _) = Client::authed(&node.ws_url(), &node.issue_token("5").await).await;
    c.subscribe("market.R").await;
    group_send(
        &redis.url(),
        &layer,
        json!([["market.R", {"type": "t", "n": 1}]]),
    )
    .await;
    assert_eq!(c.recv_json().await["data"], json!({"n": 1}));

    redis.kill();
    redis.restart();
    // The pattern is back once Redis counts it (the broker uses no patterns).
    let start = Instant::now();
    while redis_cli(redis.port, &["pubsub", "numpat"]) != ["1"] {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the channels_redis pattern was not resubscribed after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "pattern resubscribed {:?} after the restart",
        start.elapsed()
    );
    group_send(
        &redis.url(),
        &layer,
        json!([["market.R", {"type": "t", "n": 2}]]),
    )
    .await;
    assert_eq!(
        c.recv_json().await,
        json!({"type": "message", "group": "market.R", "data": {"n": 2}}),
        "delivery resumes on the same socket"
    );
    node.shutdown().await;
}

/// A Redis user that may not subscribe to the channel layer's group
/// pattern (Redis 7 gives a new ACL user no channel) is refused when the
/// listener starts, with the grant it needs. fred answers a `PSUBSCRIBE`
/// when it writes it: before, the node started, delivered no `group_send`
/// and took the refusal for an unanswered `PING`, reconnecting over and
/// over with "Redis stopped answering".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_user_without_the_layer_channels_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisProc::start(dir.path());
    let (config, layer, _keys) = compat_config(dir.path(), &redis.url());
    // The node's own channels, not the layer's.
    let own = format!("&{}*", config.redis.prefix);
    redis_cli(
        redis.port,
        &["acl", "setuser", "default", "resetchannels", &own],
    );
    match wsgate::server::Server::build(config.clone()).await {
        Err(e) => {
            let e = e.to_string();
            eprintln!("{e}");
            // Redis's NOPERM is in it when fred passed it on (not always:
            // `redis_client::subscribe_confirmed`).
            assert!(
                e.contains(&format!("ACL SETUSER <user> &{layer}__group__*")),
                "{e}"
            );
        }
        Ok(_) => panic!("the node started on a Redis user that may not use the layer's channels"),
    }
    let grant = format!("&{layer}__group__*");
    redis_cli(redis.port, &["acl", "setuser", "default", &grant]);
    let node = spawn(config).await;
    node.shutdown().await;
}

/// The example Django project: `manage.py check` and `migrate` on Postgres
/// (with its revocation trigger), a DRF token issued by Django that the
/// `django` store accepts, the three publishing paths of
/// `market/publish.py` reaching the socket, and logout (deleting the token
/// row) closing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_example_end_to_end() {
    let example = format!("{REPO}/examples/django");
    // The migration ships a copy of the trigger SQL: it must not drift.
    assert_eq!(
        std::fs::read_to_string(format!(
            "{example}/market/migrations/wsgate_revoke_trigger.sql"
        ))
        .unwrap(),
        std::fs::read_to_string(format!("{REPO}/deploy/sql/django-revoke-trigger.sql")).unwrap(),
        "examples/django/market/migrations/wsgate_revoke_trigger.sql differs from deploy/sql"
    );
    let pg = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut config, layer, _keys) = compat_config(dir.path(), SHARED_REDIS);
    config.database.url = Some(pg.url.clone());
    config.auth.store = StoreKind::Django;

    let django_env = |api: &str| -> Vec<(String, String)> {
        vec![
            ("DATABASE_URL".into(), pg.url.clone()),
            ("REDIS_URL".into(), SHARED_REDIS.into()),
            ("WSGATE_REDIS_PREFIX".into(), config.redis.prefix.clone()),
            ("CHANNELS_PREFIX".into(), layer.clone()),
            ("WSGATE_API_URL".into(), api.into()),
            ("WSGATE_API_KEY".into(), API_KEY.into()),
        ]
    };
    let manage = |args: Vec<&'static str>, env: Vec<(String, String)>| {
        let example = example.clone();
        async move {
            let mut full = vec!["manage.py"];
            full.extend(args);
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            run_python(&example, &full, &env, None).await
        }
    };

    let out = manage(vec!["check"], django_env("")).await;
    assert!(out.contains("no issues"), "{out}");
    manage(vec!["migrate", "--noinput", "-v", "0"], django_env("")).await;
    let out = manage(
        vec![
            "shell",
            "-c",
            "from django.contrib.auth.models import User\n\
             from rest_framework.authtoken.models import Token\n\
             u = User.objects.create_user('alice', password='alice-pass-123')\n\
             print(u.pk, Token.objects.create(user=u).key)",
        ],
        django_env(""),
    )
    .await;
    // The last line (Django 5.2's shell may print a line about its imports first).
    let last = out.trim().lines().last().unwrap_or_default();
    let (user_id, token) = last.split_once(' ').expect("pk and token");

    // wsgate on the same database, with the django store.
    let node = spawn(config.clone()).await;
    let (mut c, welcome) = Client::authed(&node.ws_url(), token).await;
    assert_eq!(welcome["user_id"], user_id);
    c.subscribe("market.AAPL").await;
    let api = format!("http://{}", node.addrs.api);
    for via in ["http", "redis", "channels"] {
        let out = manage(
            vec!["publish_tick", "AAPL", "189.5", "--via", via],
            django_env(&api),
        )
        .await;
        assert!(out.contains("published to market.AAPL"), "{out}");
        assert_eq!(
            c.recv_json().await,
            json!({"type": "message", "group": "market.AAPL",
                   "data": {"symbol": "AAPL", "price": 189.5}}),
            "published via {via}"
        );
    }
    // Logout (djoser deletes the token row): the trigger from the
    // example's migration closes the socket.
    manage(
        vec![
            "shell",
            "-c",
            "from rest_framework.authtoken.models import Token\nToken.objects.all().delete()",
        ],
        django_env(""),
    )
    .await;
    assert_eq!(code(c.close_within(Duration::from_secs(3)).await), 4003);

    node.shutdown().await;
}

/// The example with a custom user model (`EXAMPLE_CUSTOM_USER=1`:
/// `accounts.User`, table `accounts_member`, pk column `member_id`, active
/// column `active`): its migration installs what `wsgate django
/// trigger-sql` prints for those names, a DRF token of such a user
/// authenticates with the `auth.django_user_*` keys set, an inactive
/// user's token is refused, and deactivating the user through the ORM
/// closes the socket through the generated trigger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_example_custom_user_model() {
    let example = format!("{REPO}/examples/django");
    let pg = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.database.url = Some(pg.url.clone());
    config.auth.store = StoreKind::Django;
    config.auth.django_user_table = "accounts_member".into();
    config.auth.django_user_pk = "member_id".into();
    config.auth.django_user_active = "active".into();
    config.validate().expect("the custom names are identifiers");
    let user = config.auth.django_user().unwrap();
    assert_eq!(
        std::fs::read_to_string(format!(
            "{example}/accounts/migrations/wsgate_revoke_trigger.sql"
        ))
        .unwrap(),
        wsgate::auth::django::trigger_sql(&user),
        "accounts/migrations/wsgate_revoke_trigger.sql is not `wsgate django trigger-sql` \
         for accounts_member"
    );

    let env = [
        ("DATABASE_URL", pg.url.as_str()),
        ("EXAMPLE_CUSTOM_USER", "1"),
    ];
    let manage = |args: &'static [&'static str]| {
        let example = example.clone();
        async move {
            let mut full = vec!["manage.py"];
            full.extend(args);
            run_python(&example, &full, &env, None).await
        }
    };
    let out = manage(&["check"]).await;
    assert!(out.contains("no issues"), "{out}");
    manage(&["migrate", "--noinput", "-v", "0"]).await;
    let out = manage(&[
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model\n\
         from rest_framework.authtoken.models import Token\n\
         User = get_user_model()\n\
         assert User._meta.db_table == 'accounts_member', User._meta.db_table\n\
         User.objects.create_user('first', password='first-pass-123')\n\
         u = User.objects.create_user('carol', password='carol-pass-123')\n\
         off = User.objects.create_user('dave', password='dave-pass-123', is_active=False)\n\
         print(u.pk, Token.objects.create(user=u).key, Token.objects.create(user=off).key)",
    ])
    .await;
    let last = out.trim().lines().last().unwrap_or_default();
    let fields: Vec<&str> = last.split(' ').collect();
    let [user_id, token, inactive_token] = fields[..] else {
        panic!("pk and two tokens: {out}");
    };
    assert_eq!(user_id, "2", "carol is the second member");

    let node = spawn(config.clone()).await;
    let (mut c, welcome) = Client::authed(&node.ws_url(), token).await;
    assert_eq!(welcome["user_id"], user_id);
    let mut refused = Client::connect(&node.ws_url()).await;
    refused
        .send_json(json!({"type": "auth", "token": inactive_token}))
        .await;
    assert_eq!(
        code(refused.close_within(Duration::from_secs(3)).await),
        4003
    );

    // Deactivating carol through the ORM: the generated trigger on
    // accounts_member notifies, the node closes her socket.
    manage(&[
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model\n\
         u = get_user_model().objects.get(username='carol')\n\
         u.is_active = False\n\
         u.save()",
    ])
    .await;
    assert_eq!(code(c.close_within(Duration::from_secs(3)).await), 4003);
    node.shutdown().await;
}

/// Session-cookie users (Channels' `AuthMiddlewareStack`): Django's test
/// client logs in with a session and POSTs `/api/ws-token/`, which inserts
/// a 5-minute token into `wsgate_tokens` (refusing anonymous users and a
/// session POST without the CSRF header); a node with the `native` store on
/// the same database authenticates it; logging that session out deletes
/// its tokens, which closes its socket (4003), not another session's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_session_user_gets_a_native_token() {
    let example = format!("{REPO}/examples/django");
    let pg = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.database.url = Some(pg.url.clone());
    assert_eq!(config.auth.store, StoreKind::Native);
    // The node creates wsgate_tokens (database.migrate) before Django mints.
    let node = spawn(config.clone()).await;

    let env = [
        ("DATABASE_URL", pg.url.as_str()),
        ("DJANGO_ALLOWED_HOSTS", "testserver"),
    ];
    run_python(
        &example,
        &["manage.py", "migrate", "--noinput", "-v", "0"],
        &env,
        None,
    )
    .await;
    let out = run_python(
        &example,
        &[
            "manage.py",
            "shell",
            "-c",
            "import json\n\
             from django.contrib.auth import get_user_model\n\
             from django.test import Client\n\
             get_user_model().objects.create_user('first', password='first-pass-123')\n\
             u = get_user_model().objects.create_user('erin', password='erin-pass-123')\n\
             assert Client().post('/api/ws-token/').status_code in (401, 403)\n\
             strict = Client(enforce_csrf_checks=True)\n\
             assert strict.login(username='erin', password='erin-pass-123')\n\
             r = strict.post('/api/ws-token/')\n\
             assert r.status_code == 403 and b'CSRF' in r.content, r.content\n\
             out = {}\n\
             for name in ('laptop', 'phone'):\n\
             \x20   c = Client()\n\
             \x20   assert c.login(username='erin', password='erin-pass-123')\n\
             \x20   r = c.post('/api/ws-token/')\n\
             \x20   assert r.status_code == 200, r.content\n\
             \x20   assert r['Cache-Control'] == 'no-store'\n\
             \x20   out[name] = dict(r.json(), session=c.cookies['sessionid'].value)\n\
             print(json.dumps(out))",
        ],
        &env,
        None,
    )
    .await;
    let minted: Value = serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    let laptop = &minted["laptop"];
    assert_eq!(laptop["user_id"], "2", "erin is the second user");
    assert_eq!(laptop["expires_in"], 300);
    let token = laptop["token"].as_str().unwrap();
    assert!(token.starts_with("wsg_") && token.len() == 47, "{token}");

    // Only the digest is stored, with a 5-minute expiry.
    let pool = pg.pool().await;
    let row: (String, i64, Option<i64>) = sqlx::query_as(
        "SELECT user_id, expires_at - created_at, revoked_at FROM wsgate_tokens WHERE digest = $1",
    )
    .bind(common::digest(token))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row, ("2".to_string(), 300_000, None));
    let stored_plain: i64 =
        sqlx::query_scalar("SELECT count(*) FROM wsgate_tokens WHERE digest = $1")
            .bind(token)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored_plain, 0);

    let (mut on_laptop, welcome) = Client::authed(&node.ws_url(), token).await;
    assert_eq!(welcome["user_id"], "2");
    let (mut on_phone, _) =
        Client::authed(&node.ws_url(), minted["phone"]["token"].as_str().unwrap()).await;

    // Logging the laptop's session out revokes its tokens only.
    let session = laptop["session"].as_str().unwrap();
    run_python(
        &example,
        &[
            "manage.py",
            "shell",
            "-c",
            "import os\n\
             from django.test import Client\n\
             c = Client()\n\
             c.cookies['sessionid'] = os.environ['SESSION']\n\
             c.logout()",
        ],
        &[env[0], env[1], ("SESSION", session)],
        None,
    )
    .await;
    assert_eq!(
        code(on_laptop.close_within(Duration::from_secs(3)).await),
        4003
    );
    on_phone.expect_silence(Duration::from_millis(300)).await;
    pool.close().await;
    node.shutdown().await;
}
