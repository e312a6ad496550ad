//! `groups.authorize` against the real example Django project
//! (`examples/django/market/authorize.py`), served by `runserver` on a
//! throwaway PostgreSQL database: wsgate's signed subscribe hook answered
//! by DRF permissions (members of the Django group "pro" may subscribe to
//! `market.pro.*`), a grant from `POST /api/ws-grant/`, and revoking with
//! the example's `revoke()`: the user's socket gets `unsubscribed` and the
//! hook is asked again. Needs the virtualenv of
//! `scripts/install-python-tools.sh` (fails, never skips, without it).

mod common;

use std::time::Duration;

use common::django::{DjangoServer, manage};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use wsgate::config::StoreKind;

const LOGIN_SECRET: &str = "test-jwt-secret-0123456789abcdef-0123";
const HOOK_SECRET: &str = "django-hook-secret-0123456789abcdef-0123";
const GRANT_SECRET: &str = "django-grant-secret-0123456789abcdef-012";

fn login(user: &str) -> String {
    let now = wsgate::clock::unix_ms() / 1000;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"user_id": user, "exp": now + 300}),
        &EncodingKey::from_secret(LOGIN_SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

async fn subscribe(c: &mut Client, group: &str, token: Option<&str>) -> Value {
    let mut req = json!({"type": "subscribe", "group": group});
    if let Some(t) = token {
        req["token"] = json!(t);
    }
    c.request(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_answers_the_hook_with_drf_permissions() {
    let pg = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.auth.store = StoreKind::Jwt;
    config.auth.jwt_secret = Some(LOGIN_SECRET.into());
    config.groups.authorize = vec!["market.pro.*".into()];
    config.authorize.grant_secret = Some(GRANT_SECRET.into());
    config.authorize.hook_secret = Some(HOOK_SECRET.into());
    // Set below, once Django listens; the node must exist first for the
    // API URL Django calls back.
    config.authorize.hook_url = Some("http://127.0.0.1:9/".into());
    let api_port = free_port();
    config.api.listen = format!("127.0.0.1:{api_port}").parse().unwrap();
    let api_url = format!("http://127.0.0.1:{api_port}");
    let env = [
        ("DATABASE_URL", pg.url.as_str()),
        ("DJANGO_ALLOWED_HOSTS", "127.0.0.1,testserver"),
        ("WSGATE_HOOK_SECRET", HOOK_SECRET),
        ("WSGATE_GRANT_SECRET", GRANT_SECRET),
        ("WSGATE_API_URL", api_url.as_str()),
        ("WSGATE_API_KEY", API_KEY),
    ];
    manage(&["migrate", "--noinput", "-v", "0"], &env).await;
    manage(
        &[
            "shell",
            "-c",
            "from django.contrib.auth import get_user_model\n\
             from django.contrib.auth.models import Group\n\
             pro = Group.objects.create(name='pro')\n\
             alice = get_user_model().objects.create_user('alice', password='alice-pass-123')\n\
             bob = get_user_model().objects.create_user('bob', password='bob-pass-123')\n\
             alice.groups.add(pro)\n\
             assert (alice.pk, bob.pk) == (1, 2), (alice.pk, bob.pk)",
        ],
        &env,
    )
    .await;
    let django = DjangoServer::start(&env);
    config.authorize.hook_url = Some(django.url("/api/wsgate/authorize/"));
    let node = spawn(config).await;

    // Alice is "pro": the hook (Django) allows; Bob is not.
    let (mut alice, _) = Client::authed(&node.ws_url(), &login("1")).await;
    let (mut bob, _) = Client::authed(&node.ws_url(), &login("2")).await;
    let r = subscribe(&mut alice, "market.pro.AAPL", None).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    let r = subscribe(&mut bob, "market.pro.AAPL", None).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    // An unknown user, and a group the permissions do not cover.
    let (mut ghost, _) = Client::authed(&node.ws_url(), &login("99")).await;
    assert_eq!(
        subscribe(&mut ghost, "market.pro.AAPL", None).await["code"],
        "forbidden"
    );
    let m = node.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "wsgate_subscribe_authorizations_total{outcome=\"allow\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "wsgate_subscribe_authorizations_total{outcome=\"deny\"}"
        ),
        2.0
    );
    node.publish("market.pro.AAPL", json!({"p": 1})).await;
    assert_eq!(alice.recv_json().await["data"], json!({"p": 1}));

    // A grant from the example's view: Alice gets one, Bob is refused.
    let out = manage(
        &[
            "shell",
            "-c",
            "import json\n\
             from django.contrib.auth import get_user_model\n\
             from django.test import Client\n\
             users = get_user_model().objects\n\
             c = Client()\n\
             c.force_login(users.get(username='bob'))\n\
             assert c.post('/api/ws-grant/', {'group': 'market.pro.MSFT'}).status_code == 403\n\
             c = Client()\n\
             c.force_login(users.get(username='alice'))\n\
             r = c.post('/api/ws-grant/', {'group': 'market.pro.MSFT'})\n\
             assert r.status_code == 200, r.content\n\
             print(json.dumps(r.json()))",
        ],
        &env,
    )
    .await;
    let grant: Value = serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    let grant = grant["token"].as_str().unwrap();
    let calls_before = node
        .metric("wsgate_subscribe_hook_duration_seconds_count")
        .await;
    let r = subscribe(&mut alice, "market.pro.MSFT", Some(grant)).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    // Bob cannot use Alice's grant.
    let r = subscribe(&mut bob, "market.pro.MSFT", Some(grant)).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    assert_eq!(
        node.metric("wsgate_subscribe_hook_duration_seconds_count")
            .await,
        calls_before,
        "grants make no hook call"
    );

    // Alice loses "pro"; the backend revokes through the example's helper.
    manage(
        &[
            "shell",
            "-c",
            "from django.contrib.auth import get_user_model\n\
             from market.authorize import revoke\n\
             alice = get_user_model().objects.get(username='alice')\n\
             alice.groups.clear()\n\
             revoke(alice.pk, 'market.pro.AAPL')",
        ],
        &env,
    )
    .await;
    assert_eq!(
        alice.recv_json().await,
        json!({"type": "unsubscribed", "group": "market.pro.AAPL"})
    );
    node.publish("market.pro.AAPL", json!({"p": 2})).await;
    alice.expect_silence(Duration::from_millis(300)).await;
    // The cached allow went with it: Django is asked again, and says no.
    let r = subscribe(&mut alice, "market.pro.AAPL", None).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    node.shutdown().await;
    drop(django);
    pg.drop_db().await;
}
