//! Property tests over the pure parts of the protocol (`wsgate::protocol`)
//! and the config loader, plus the replay of every input saved under
//! `fuzz/regressions/` (crashes the fuzz targets found) and `fuzz/seeds/`.
//!
//! Case counts are modest so the file runs in a few seconds; the fuzz
//! targets (`scripts/fuzz.sh`) search much further.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use wsgate::config::{Config, ConfigError};
use wsgate::protocol::{
    AuthFrameError, ClientFrame, EnvelopeError, MAX_AUTH_FRAME_BYTES, MAX_GROUP_LEN, Position,
    Publication, Reply, Request, decode_envelope, encode_envelope, is_valid_group, message_frame,
    parse_auth_frame, parse_request,
};

/// The fuzz targets' entry points, so saved crash inputs replay through the
/// very code that found them.
#[path = "../fuzz/src/lib.rs"]
mod harness;

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        // Failures are reported with their minimal input; keep them as
        // explicit tests rather than files next to this one.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Strategies.

/// Arbitrary JSON, a few levels deep. Floats are a fixed few so values
/// compare exactly after a trip through text.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![0.5, -1.25e10, 1e300, 3.0, -0.0]).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[a-zA-Z0-9._:@ -]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(json_key(), inner, 0..6).prop_map(object),
        ]
    })
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["type", "id", "group", "data", "since", "token", "x"])
            .prop_map(String::from),
        any::<String>(),
    ]
}

fn object(map: BTreeMap<String, Value>) -> Value {
    Value::Object(map.into_iter().collect::<Map<_, _>>())
}

/// A group name that is valid by the protocol's rule.
fn valid_group() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:@-]{1,128}"
}

/// Strings near the group rule: valid ones, too long ones, empty ones, ones
/// with one bad character, and arbitrary ones.
fn group_like() -> impl Strategy<Value = String> {
    prop_oneof![
        valid_group(),
        "[A-Za-z0-9._:@-]{120,140}",
        Just(String::new()),
        ("[a-z.]{0,10}", "[ /*é\\x00\\t#$%+,]", "[a-z.]{0,10}").prop_map(|(a, b, c)| a + &b + &c),
        any::<String>(),
    ]
}

/// The group rule written out plainly, without the implementation's tricks.
fn reference_is_valid_group(s: &str) -> bool {
    let n = s.chars().count();
    (1..=MAX_GROUP_LEN).contains(&n)
        && s.chars().all(|c| {
            c.is_ascii_uppercase()
                || c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || ".:_@-".contains(c)
        })
}

/// A JSON number as a client may write it, including ones no float holds.
fn number_text() -> impl Strategy<Value = String> {
    "-?(0|[1-9][0-9]{0,40})(\\.[0-9]{1,12})?([eE][+-]?[0-9]{1,4})?"
}

// ---------------------------------------------------------------------------
// parse_request.

/// What `parse_request` should make of a JSON value, worked out from the
/// protocol's text (section 3) over `serde_json::Value`. JSON `null` counts
/// as an absent field, except for `data`, where it is a value like any other.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Group, `since`, subscription grant (`token`).
    Subscribe(String, Option<(u64, String)>, Option<String>),
    Unsubscribe(String),
    Publish(String, String),
    Ping,
    Refresh(String),
    Refused(&'static str),
}

fn reference_request(v: &Value) -> (Option<String>, Outcome) {
    use Outcome::Refused;
    let Some(obj) = v.as_object() else {
        return (None, Refused("bad_request"));
    };
    let field = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let id = match field("id") {
        None => None,
        Some(id @ (Value::Number(_) | Value::String(_))) => Some(id.to_string()),
        Some(_) => return (None, Refused("bad_request")),
    };
    let kind = match field("type") {
        Some(Value::String(kind)) => kind.as_str(),
        _ => return (id, Refused("bad_request")),
    };
    let group = || match field("group") {
        Some(Value::String(g)) if reference_is_valid_group(g) => Ok(g.clone()),
        _ => Err(Refused("bad_request")),
    };
    let outcome = match kind {
        "subscribe" => group()
            .and_then(|g| match field("since") {
                None => Ok((g, None)),
                Some(Value::Object(s)) if s.len() == 2 => {
                    match (s.get("offset").and_then(Value::as_u64), s.get("epoch")) {
                        (Some(offset), Some(Value::String(epoch))) => {
                            Ok((g, Some((offset, epoch.clone()))))
                        }
                        _ => Err(Refused("bad_request")),
                    }
                }
                Some(_) => Err(Refused("bad_request")),
            })
            // A grant: a non-empty string of at most 4 KiB.
            .and_then(|(g, since)| match field("token") {
                None => Ok(Outcome::Subscribe(g, since, None)),
                Some(Value::String(t)) if !t.is_empty() && t.len() <= MAX_AUTH_FRAME_BYTES => {
                    Ok(Outcome::Subscribe(g, since, Some(t.clone())))
                }
                Some(_) => Err(Refused("bad_request")),
            }),
        "unsubscribe" => group().map(Outcome::Unsubscribe),
        "publish" => group().and_then(|g| match obj.get("data") {
            Some(data) => Ok(Outcome::Publish(g, data.to_string())),
            None => Err(Refused("bad_request")),
        }),
        "ping" => Ok(Outcome::Ping),
        // Bounded like the first frame: the whole frame at most 4 KiB, and
        // a non-empty string token.
        "refresh" if v.to_string().len() > MAX_AUTH_FRAME_BYTES => Err(Refused("bad_request")),
        "refresh" => match field("token") {
            Some(Value::String(t)) if !t.is_empty() => Ok(Outcome::Refresh(t.clone())),
            _ => Err(Refused("bad_request")),
        },
        "auth" => Err(Refused("bad_request")),
        _ => Err(Refused("unknown_type")),
    };
    (id, outcome.unwrap_or_else(|refused| refused))
}

fn actual_request(frame: ClientFrame) -> (Option<String>, Outcome) {
    let outcome = match frame.request {
        Err(e) => Outcome::Refused(e.code.as_str()),
        Ok(Request::Subscribe {
            group,
            since,
            token,
            ..
        }) => Outcome::Subscribe(
            group,
            since.map(|Position { offset, epoch }| (offset, epoch)),
            token.map(|t| t.expose().to_string()),
        ),
        Ok(Request::Unsubscribe { group }) => Outcome::Unsubscribe(group),
        Ok(Request::Publish { group, data }) => Outcome::Publish(group, data.get().to_string()),
        Ok(Request::Ping) => Outcome::Ping,
        Ok(Request::Refresh { token }) => Outcome::Refresh(token.expose().to_string()),
    };
    (frame.id.map(|id| id.get().to_string()), outcome)
}

/// Objects shaped like requests: each field absent, well-formed or wrong.
fn request_like() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        prop::sample::select(vec![
            "subscribe",
            "unsubscribe",
            "publish",
            "ping",
            "refresh",
            "auth",
            "Subscribe",
            "nope",
            ""
        ])
        .prop_map(Value::from),
        json_value(),
    ];
    let id = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        json_value(),
    ];
    let group = prop_oneof![group_like().prop_map(Value::from), json_value()];
    let since = prop_oneof![
        (any::<u64>(), any::<String>()).prop_map(|(o, e)| json!({"offset": o, "epoch": e})),
        (json_value(), json_value()).prop_map(|(o, e)| json!({"offset": o, "epoch": e})),
        any::<u64>().prop_map(|o| json!({"offset": o})),
        any::<u64>().prop_map(|o| json!({"offset": o, "epoch": "e", "x": 1})),
        json_value(),
    ];
    let token = prop_oneof![
        "[A-Za-z0-9_-]{0,64}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        // Around the 4 KiB bound of a refresh frame.
        (4000usize..4120).prop_map(|n| Value::from("t".repeat(n))),
        json_value(),
    ];
    (
        prop::option::of(kind),
        prop::option::of(id),
        prop::option::of(group),
        prop::option::of(json_value()),
        prop::option::of(since),
        prop::option::of(token),
        prop::collection::btree_map(json_key(), json_value(), 0..3),
    )
        .prop_map(|(kind, id, group, data, since, token, mut extra)| {
            for (k, v) in [
                ("type", kind),
                ("id", id),
                ("group", group),
                ("data", data),
                ("since", since),
                ("token", token),
            ] {
                match v {
                    Some(v) => extra.insert(k.to_string(), v),
                    None => extra.remove(k),
                };
            }
            object(extra)
        })
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn parse_request_never_panics_on_arbitrary_strings(
        text in prop_oneof![
            any::<String>(),
            "[\\[\\]{}\",:0-9a-z .eE+\\\\-]{0,64}",
            "\\{\"type\":\"[a-z]{0,12}\",\"group\":\"[ -~]{0,20}\"[,:\\[\\]{}\"0-9a-z ]{0,20}",
        ]
    ) {
        let frame = parse_request(&text);
        if let Some(id) = &frame.id {
            prop_assert!(text.contains(id.get()));
        }
        let _ = parse_auth_frame(&text);
    }

    /// Every JSON value gets the answer the protocol's text gives it.
    #[test]
    fn parse_request_agrees_with_the_protocol_on_arbitrary_json(
        v in prop_oneof![request_like(), json_value()]
    ) {
        let text = v.to_string();
        prop_assert_eq!(actual_request(parse_request(&text)), reference_request(&v), "{}", text);
    }

    /// An accepted subscribe comes back in the reply exactly as sent.
    #[test]
    fn subscribe_round_trips(
        group in valid_group(),
        id in prop::option::of(prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ]),
        since in prop::option::of((any::<u64>(), any::<String>())),
        spaced in any::<bool>(),
    ) {
        let mut request = json!({"type": "subscribe", "group": group});
        if let Some(id) = &id {
            request["id"] = id.clone();
        }
        if let Some((offset, epoch)) = &since {
            request["since"] = json!({"offset": offset, "epoch": epoch});
        }
        let text = if spaced {
            serde_json::to_string_pretty(&request).unwrap()
        } else {
            request.to_string()
        };
        let frame = parse_request(&text);
        let Ok(Request::Subscribe {
            group: got,
            since: got_since,
            ..
        }) = frame.request
        else {
            return Err(TestCaseError::fail(format!("refused: {text}")));
        };
        prop_assert_eq!(&got, &group);
        prop_assert_eq!(got_since.map(|s| (s.offset, s.epoch)), since.clone());
        let reply = Reply::Subscribed {
            group: &got,
            recovered: since.as_ref().map(|_| false),
            offset: None,
            epoch: None,
            id: frame.id.as_deref(),
        }
        .encode();
        let mut expected = json!({"type": "subscribed", "group": group});
        if since.is_some() {
            expected["recovered"] = json!(false);
        }
        if let Some(id) = id {
            expected["id"] = id;
        }
        prop_assert_eq!(serde_json::from_str::<Value>(reply.as_str()).unwrap(), expected);
        // Unsubscribe takes the same groups.
        let text = json!({"type": "unsubscribe", "group": group}).to_string();
        let unsubscribed = matches!(
            parse_request(&text).request,
            Ok(Request::Unsubscribe { group: ref g }) if *g == group
        );
        prop_assert!(unsubscribed, "{}", text);
    }

    /// Published data reaches the message frame and the broker envelope byte
    /// for byte, whatever JSON it is.
    #[test]
    fn publish_data_round_trips(group in valid_group(), data in json_value(), spaced in any::<bool>()) {
        let data_text = if spaced {
            serde_json::to_string_pretty(&data).unwrap()
        } else {
            data.to_string()
        };
        let text = format!(r#"{{"type":"publish","group":{},"data":{data_text}}}"#, json!(group));
        let Ok(Request::Publish { group: got, data: raw }) = parse_request(&text).request else {
            return Err(TestCaseError::fail(format!("refused: {text}")));
        };
        prop_assert_eq!(&got, &group);
        prop_assert_eq!(raw.get(), data_text.as_str());
        let frame: Value = serde_json::from_str(message_frame(&got, &raw, None).as_str()).unwrap();
        prop_assert_eq!(frame, json!({"type": "message", "group": group, "data": data}));
    }

    /// Numbers and strings come back exactly as written; anything else is
    /// refused with `bad_request` and no id (`null` counts as no id).
    #[test]
    fn ids_are_echoed_exactly_or_refused(
        id in prop_oneof![
            number_text(),
            any::<String>().prop_map(|s| json!(s).to_string()),
            // Escapes are echoed as written, not re-encoded.
            "\"(\\\\u00[0-7][0-9a-f]|\\\\[nrt\"\\\\/]|[a-z]){0,8}\"",
            json_value().prop_map(|v| v.to_string()),
        ]
    ) {
        let text = format!(r#"{{"type":"ping","id":{id}}}"#);
        let frame = parse_request(&text);
        let echo = id.starts_with('"') || id.starts_with('-') || id.as_bytes()[0].is_ascii_digit();
        if echo {
            prop_assert_eq!(frame.id.as_ref().map(|i| i.get()), Some(id.as_str()));
            prop_assert!(matches!(frame.request, Ok(Request::Ping)));
            let pong = Reply::Pong { id: frame.id.as_deref() }.encode();
            prop_assert_eq!(pong.as_str(), format!(r#"{{"type":"pong","id":{id}}}"#));
            let error = parse_request(&format!(r#"{{"type":"dance","id":{id}}}"#));
            prop_assert_eq!(error.id.map(|i| i.get().to_string()), Some(id.clone()));
        } else if id == "null" {
            prop_assert!(frame.id.is_none());
            prop_assert!(matches!(frame.request, Ok(Request::Ping)));
        } else {
            prop_assert!(frame.id.is_none());
            prop_assert_eq!(frame.request.unwrap_err().code.as_str(), "bad_request");
        }
    }

    /// An accepted refresh carries the token exactly as sent (escapes
    /// decoded), its reply echoes the id, and nothing over 4 KiB is taken.
    #[test]
    fn refresh_round_trips(
        token in prop_oneof![
            "[A-Za-z0-9_-]{1,64}",
            any::<String>(),
            (4000usize..4100).prop_map(|n| "k".repeat(n)),
        ],
        id in prop::option::of(prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ]),
    ) {
        let mut request = json!({"type": "refresh", "token": token});
        if let Some(id) = &id {
            request["id"] = id.clone();
        }
        let text = request.to_string();
        let frame = parse_request(&text);
        prop_assert_eq!(frame.id.as_ref().map(|i| i.get().to_string()), id.as_ref().map(Value::to_string));
        match frame.request {
            Ok(Request::Refresh { token: got }) => {
                prop_assert!(!token.is_empty() && text.len() <= MAX_AUTH_FRAME_BYTES, "{}", text);
                prop_assert_eq!(got.expose(), token.as_str());
                // The request's debug form never shows the token.
                let debug = format!("{:?}", Request::Refresh { token: got });
                prop_assert_eq!(debug, "Refresh { token: Token(<redacted>) }");
                let reply = Reply::Refreshed { id: frame.id.as_deref() }.encode();
                let mut expected = json!({"type": "refreshed"});
                if let Some(id) = id {
                    expected["id"] = id;
                }
                prop_assert_eq!(serde_json::from_str::<Value>(reply.as_str()).unwrap(), expected);
            }
            Err(e) => {
                prop_assert!(token.is_empty() || text.len() > MAX_AUTH_FRAME_BYTES, "{}", text);
                prop_assert_eq!(e.code.as_str(), "bad_request");
            }
            Ok(other) => return Err(TestCaseError::fail(format!("{other:?} from {text}"))),
        }
    }

    #[test]
    fn is_valid_group_agrees_with_a_plain_reference(
        s in prop_oneof![any::<String>(), group_like(), "[A-Za-z0-9._:@é -]{0,130}"]
    ) {
        prop_assert_eq!(is_valid_group(&s), reference_is_valid_group(&s), "{:?}", s);
        // The parser applies the same rule.
        let text = json!({"type": "subscribe", "group": s}).to_string();
        prop_assert_eq!(parse_request(&text).request.is_ok(), reference_is_valid_group(&s));
    }
}

// ---------------------------------------------------------------------------
// parse_auth_frame.

/// The first-frame rule of section 2 over `serde_json::Value`: an object
/// within 4 KiB whose `token` is a non-empty string and whose `type`, if
/// any, is `"auth"` (`null` counting as absent).
fn reference_auth(text: &str) -> Result<String, AuthFrameError> {
    if text.len() > MAX_AUTH_FRAME_BYTES {
        return Err(AuthFrameError::TooLarge);
    }
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) else {
        return Err(AuthFrameError::NotAnObject);
    };
    match obj.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "auth" => {}
        Some(_) => return Err(AuthFrameError::WrongType),
    }
    match obj.get("token") {
        Some(Value::String(t)) if !t.is_empty() => Ok(t.clone()),
        _ => Err(AuthFrameError::NoToken),
    }
}

fn auth_like() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just(json!("auth")),
        Just(json!("Auth")),
        Just(json!("subscribe")),
        json_value(),
    ];
    let token = prop_oneof![
        "[A-Za-z0-9_-]{0,64}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        json_value(),
    ];
    // Padding that puts some frames just under and just over 4 KiB.
    let pad = prop_oneof![0usize..64, 3990usize..4120];
    (
        prop::option::of(kind),
        prop::option::of(token),
        prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..3),
        pad,
        any::<bool>(),
    )
        .prop_map(|(kind, token, mut obj, pad, spaced)| {
            if let Some(kind) = kind {
                obj.insert("type".into(), kind);
            }
            if let Some(token) = token {
                obj.insert("token".into(), token);
            }
            let text = if spaced {
                serde_json::to_string_pretty(&object(obj.clone())).unwrap()
            } else {
                object(obj.clone()).to_string()
            };
            let room = pad.saturating_sub(text.len() + 10);
            if room > 0 {
                obj.insert("zzpad".into(), Value::from("p".repeat(room)));
            }
            object(obj).to_string()
        })
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn parse_auth_frame_accepts_exactly_objects_with_a_token(
        text in prop_oneof![
            4 => auth_like(),
            1 => any::<String>(),
            1 => json_value().prop_map(|v| v.to_string()),
        ]
    ) {
        prop_assert_eq!(parse_auth_frame(&text), reference_auth(&text), "{}", text);
    }
}

// ---------------------------------------------------------------------------
// The broker envelope.

fn traceparent() -> impl Strategy<Value = String> {
    prop_oneof![
        "00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]",
        "[!-~]{0,140}",
        any::<String>(),
    ]
}

fn publication() -> impl Strategy<Value = Publication> {
    (
        valid_group(),
        json_value(),
        prop::option::of((any::<u64>(), any::<String>())),
        prop::option::of(any::<u64>()),
        prop::option::of(traceparent()),
        prop::option::of((any::<u64>(), any::<String>())),
    )
        .prop_map(|(group, data, position, ts, trace, seq)| Publication {
            group,
            data: RawValue::from_string(data.to_string()).unwrap(),
            position: position.map(|(offset, epoch)| Position { offset, epoch }),
            ts,
            trace,
            seq: seq.map(|(offset, epoch)| Position { offset, epoch }),
        })
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn envelope_round_trips(p in publication(), other in group_like()) {
        let text = encode_envelope(&p);
        let d = decode_envelope(&p.group, text.as_bytes()).unwrap();
        prop_assert_eq!(&d.group, &p.group);
        prop_assert_eq!(d.data.get(), p.data.get());
        prop_assert_eq!(&d.position, &p.position);
        prop_assert_eq!(&d.seq, &p.seq);
        prop_assert_eq!(d.ts, p.ts);
        // Only a plausible traceparent is carried on.
        let plausible = p
            .trace
            .clone()
            .filter(|t| t.len() <= 128 && t.bytes().all(|b| b.is_ascii_graphic()));
        prop_assert_eq!(&d.trace, &plausible);
        // On another group's channel it is refused.
        if other != p.group {
            prop_assert_eq!(
                decode_envelope(&other, text.as_bytes()).unwrap_err(),
                EnvelopeError::Group
            );
        }
        // An envelope for an invalid group is refused even on its own channel.
        if !reference_is_valid_group(&other) {
            let bad = Publication { group: other.clone(), ..p.clone() };
            prop_assert_eq!(
                decode_envelope(&other, encode_envelope(&bad).as_bytes()).unwrap_err(),
                EnvelopeError::Group
            );
        }
    }

    #[test]
    fn decode_envelope_never_panics(
        channel in group_like(),
        payload in prop_oneof![
            any::<Vec<u8>>(),
            json_value().prop_map(|v| v.to_string().into_bytes()),
            (json_value(), json_value(), json_value()).prop_map(|(v, o, e)| {
                json!({"v": v, "group": "g", "data": 1, "offset": o, "epoch": e}).to_string().into_bytes()
            }),
        ]
    ) {
        harness::envelope_decoder(&[channel.as_bytes(), b"\n", &payload].concat());
    }
}

// ---------------------------------------------------------------------------
// Config::load_with_env.

/// Every `section.key` of the configuration, from its defaults.
fn config_keys() -> Vec<String> {
    let defaults = serde_json::to_value(Config::default()).unwrap();
    let mut keys = Vec::new();
    for (section, fields) in defaults.as_object().unwrap() {
        for field in fields.as_object().unwrap().keys() {
            keys.push(format!("{section}.{field}"));
        }
    }
    keys
}

fn env_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{1,25}",
        "-[0-9]{1,5}",
        "[0-9]{1,12}(ns|us|ms|s|m|h|d|w|y|years|months)",
        "[0-9]{1,3}\\.[0-9]{1,3}(e[0-9]{1,3})?",
        Just("true".to_string()),
        Just(String::new()),
        "[a-z.*{}_,]{0,30}",
        "(redis|postgres|sqlite|http)://[a-z0-9:@/.]{0,20}",
        "127\\.0\\.0\\.1:[0-9]{1,6}",
    ]
}

fn env_key() -> impl Strategy<Value = String> {
    let known = prop::sample::select(config_keys())
        .prop_map(|k| format!("WSGATE__{}", k.replace('.', "__").to_uppercase()));
    prop_oneof![
        4 => known,
        1 => "WSGATE__[A-Z_]{0,24}",
        1 => "WSGATE__(SERVER|AUTH|LIMITS)__[A-Z_]{0,12}(__[A-Z]{0,4})?",
        1 => any::<String>().prop_map(|s| format!("WSGATE__{s}")),
    ]
}

proptest! {
    #![proptest_config(cases(256))]

    /// Whatever the environment, loading answers (no panic), an error names
    /// the key it is about, and an accepted config is valid and survives a
    /// trip through TOML.
    #[test]
    fn config_env_never_panics_and_errors_name_a_key(
        env in prop::collection::vec((env_key(), env_value()), 1..4)
    ) {
        let result = Config::load_with_env(None, env.clone());
        if let Err(e) = &result {
            let ConfigError::Invalid { key, .. } = e else {
                return Err(TestCaseError::fail(format!("{env:?}: no key named: {e}")));
            };
            // The key of a variable, a section of it, the variable itself,
            // or a key that a check across settings is about.
            let named = config_keys().contains(key)
                || env.iter().any(|(var, _)| {
                    let dotted = var
                        .trim_start_matches("WSGATE__")
                        .replace("__", ".")
                        .to_lowercase();
                    var == key || dotted == *key || dotted.starts_with(&format!("{key}."))
                });
            prop_assert!(named, "{:?}: {}", env, e);
        }
        harness::check_config(result);
    }
}

proptest! {
    #![proptest_config(cases(128))]

    /// String settings keep what the environment says, even when it looks
    /// like a number or a boolean (`007`, `1e3`, `true`).
    #[test]
    fn config_env_strings_are_kept_as_written(
        value in prop_oneof![
            "[0-9]{1,30}",
            "0[0-9]{1,5}",
            "-?[0-9]{1,5}\\.[0-9]{0,5}(e[0-9]{1,3})?",
            Just("true".to_string()),
            Just("NaN".to_string()),
            "[!-~]{1,20}",
        ],
        keys in prop::collection::vec("[0-9a-f]{16,40}", 1..4),
    ) {
        let env = vec![
            ("WSGATE__SERVER__NODE_ID".to_string(), value.clone()),
            ("WSGATE__REDIS__PREFIX".to_string(), value.clone()),
            ("WSGATE__API__KEYS".to_string(), keys.join(",")),
        ];
        let c = Config::load_with_env(None, env).unwrap();
        prop_assert_eq!(c.server.node_id.as_deref(), Some(value.as_str()));
        prop_assert_eq!(&c.redis.prefix, &value);
        prop_assert_eq!(&c.api.keys, &keys);
    }
}

// ---------------------------------------------------------------------------
// Saved fuzz inputs.

/// Replays every file under `fuzz/regressions/<target>/` (minimized crashes
/// found by `scripts/fuzz.sh`) and `fuzz/seeds/<target>/` through the
/// target's entry point.
#[test]
fn fuzz_regressions_and_seeds_replay() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for (target, run) in harness::TARGETS {
        for dir in ["regressions", "seeds"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
            files.sort();
            for file in files.into_iter().filter(|f| f.is_file()) {
                let data = std::fs::read(&file).unwrap();
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "{} fails again", file.display());
                replayed += 1;
            }
        }
    }
    assert!(
        replayed > 0,
        "no fuzz inputs found under {}",
        root.display()
    );
}
