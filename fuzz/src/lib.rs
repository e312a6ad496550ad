//! The entry points of the fuzz targets, shared with the regression replay in
//! `tests/proptest_protocol.rs` (which includes this file with `#[path]`), so
//! a crash input saved under `fuzz/regressions/<target>/` is replayed through
//! exactly the code that found it.
//!
//! Each function takes the raw fuzzer input, runs it through the parser and
//! checks the invariants that must hold whatever the input; a violated
//! invariant panics, which libFuzzer reports as a crash.
//!
//! Only `wsgate`, `bytes`, `serde_json`, `toml` and `std` are used here: the
//! file must build both in the fuzz crate and as a module of an integration
//! test.

use std::path::PathBuf;

use serde_json::value::RawValue;
use wsgate::config::{Config, ConfigError};
use wsgate::protocol::{
    ClientFrame, MAX_AUTH_FRAME_BYTES, Publication, Reply, Request, decode_envelope,
    encode_envelope, is_valid_group, message_frame, parse_auth_frame, parse_request,
};

/// `frame_parser`: the bytes as one text frame, before and after
/// authentication. Invalid UTF-8 is read lossily (the socket library refuses
/// it before it reaches the parser, but the parser must not care); valid
/// UTF-8 is also spliced raw into the value positions of realistic frames
/// so the fuzzer explores ids, groups, data and tokens directly.
pub fn frame_parser(data: &[u8]) {
    match std::str::from_utf8(data) {
        Ok(text) => {
            check_frame(text);
            for (head, tail) in [
                (r#"{"type":"auth","token":"#, "}"),
                (r#"{"type":"ping","id":"#, "}"),
                (r#"{"type":"subscribe","group":"g","since":"#, "}"),
                (r#"{"type":"subscribe","group":"#, r#","id":1}"#),
                (r#"{"type":"publish","group":"g","data":"#, "}"),
                (r#"{"type":"#, r#","group":"g","data":1}"#),
            ] {
                check_frame(&format!("{head}{text}{tail}"));
            }
        }
        Err(_) => check_frame(&String::from_utf8_lossy(data)),
    }
}

fn is_json(text: &str) -> bool {
    // RawValue checks the syntax without a depth limit.
    serde_json::from_str::<&RawValue>(text).is_ok()
}

fn check_frame(text: &str) {
    if let Ok(token) = parse_auth_frame(text) {
        assert!(!token.is_empty(), "empty token accepted from {text:?}");
        assert!(
            text.len() <= MAX_AUTH_FRAME_BYTES,
            "{} byte first frame accepted",
            text.len()
        );
        assert!(
            text.trim_start().starts_with('{') && is_json(text),
            "token accepted from a non-object {text:?}"
        );
    }
    let ClientFrame { id, request } = parse_request(text);
    if let Some(id) = &id {
        let raw = id.get();
        let string_or_number = match raw.as_bytes()[0] {
            b'"' => true,
            b'-' | b'0'..=b'9' => is_json(raw),
            _ => false,
        };
        assert!(string_or_number, "id {raw} echoed from {text:?}");
        assert!(text.contains(raw), "id {raw} is not as written in {text:?}");
    }
    let id = id.as_deref();
    // The reply the session would send must be valid JSON.
    let reply = match &request {
        Err(e) => Reply::error(e, id),
        Ok(Request::Ping) => Reply::Pong { id }.encode(),
        Ok(Request::Refresh { token }) => {
            assert!(!token.expose().is_empty(), "empty refresh token accepted");
            assert!(
                text.len() <= MAX_AUTH_FRAME_BYTES,
                "{} byte refresh accepted",
                text.len()
            );
            Reply::Refreshed { id }.encode()
        }
        Ok(Request::Subscribe {
            group,
            since,
            token,
            ..
        }) => {
            assert!(is_valid_group(group), "group {group:?} accepted");
            assert!(
                token.as_ref().is_none_or(
                    |t| !t.expose().is_empty() && t.expose().len() <= MAX_AUTH_FRAME_BYTES
                ),
                "bad subscribe token accepted"
            );
            Reply::Subscribed {
                group,
                recovered: since.as_ref().map(|_| false),
                offset: since.as_ref().map(|s| s.offset),
                epoch: since.as_ref().map(|s| s.epoch.as_str()),
                id,
            }
            .encode()
        }
        Ok(Request::Unsubscribe { group }) => {
            assert!(is_valid_group(group), "group {group:?} accepted");
            Reply::Unsubscribed { group, id }.encode()
        }
        Ok(Request::Publish { group, data }) => {
            assert!(is_valid_group(group), "group {group:?} accepted");
            assert!(is_json(data.get()), "data {} is not JSON", data.get());
            let frame = message_frame(group, data, None);
            assert!(is_json(frame.as_str()), "message frame {}", frame.as_str());
            // What a client publishes crosses the broker intact.
            let publication = Publication {
                group: group.clone(),
                data: data.clone(),
                position: None,
                ts: None,
                trace: None,
                seq: None,
            };
            let decoded = decode_envelope(group, encode_envelope(&publication).as_bytes())
                .expect("an envelope we encoded decodes");
            assert_eq!(decoded.data.get(), data.get());
            Reply::Published { group, id }.encode()
        }
    };
    assert!(
        is_json(reply.as_str()),
        "reply {} is not JSON",
        reply.as_str()
    );
}

/// `envelope_decoder`: `<channel group>\n<payload>`; without a newline the
/// whole input is the payload on the channel `g`. The payload is also
/// decoded on the channel its own `group` field names, so the fuzzer does
/// not have to guess matching groups.
pub fn envelope_decoder(data: &[u8]) {
    let (channel, payload) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (
            String::from_utf8_lossy(&data[..i]).into_owned(),
            &data[i + 1..],
        ),
        None => ("g".to_string(), data),
    };
    check_envelope(&channel, payload);
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(payload)
        && let Some(serde_json::Value::String(own)) = map.get("group")
    {
        check_envelope(own, payload);
    }
}

fn check_envelope(channel: &str, payload: &[u8]) {
    let Ok(p) = decode_envelope(channel, payload) else {
        return;
    };
    assert_eq!(p.group, channel);
    assert!(is_valid_group(&p.group), "group {:?} accepted", p.group);
    if let Some(tp) = &p.trace {
        assert!(tp.len() <= 128 && tp.bytes().all(|b| b.is_ascii_graphic()));
    }
    // Decoding what we encode gives the same publication back.
    let again = decode_envelope(channel, encode_envelope(&p).as_bytes())
        .expect("a re-encoded envelope decodes");
    assert_eq!(again.group, p.group);
    assert_eq!(again.data.get(), p.data.get());
    assert_eq!(again.position, p.position);
    assert_eq!(again.ts, p.ts);
    assert_eq!(again.trace, p.trace);
    let frame = message_frame(&p.group, &p.data, p.position.as_ref());
    assert!(is_json(frame.as_str()), "message frame {}", frame.as_str());
}

/// `config_loader`: NUL-separated segments. The first is the body of a TOML
/// file (no file when it is empty); each further one is an environment
/// variable `KEY=VALUE` read as `WSGATE__KEY=VALUE` (a missing `=` gives an
/// empty value). Bytes are read lossily as UTF-8, as the environment is.
pub fn config_loader(data: &[u8]) {
    let mut segments = data.split(|&b| b == 0);
    let toml_body = segments.next().unwrap_or_default();
    let env: Vec<(String, String)> = segments
        .map(|s| {
            let s = String::from_utf8_lossy(s);
            let (k, v) = s.split_once('=').unwrap_or((&s, ""));
            (format!("WSGATE__{k}"), v.to_string())
        })
        .collect();
    let file = (!toml_body.is_empty()).then(|| {
        let path = scratch_file();
        std::fs::write(&path, toml_body).expect("write the scratch config file");
        path
    });
    let result = Config::load_with_env(file.as_deref(), env);
    if let Some(path) = file {
        let _ = std::fs::remove_file(path);
    }
    check_config(result);
}

/// A file per process (and thread), rewritten for every input.
fn scratch_file() -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    std::env::temp_dir().join(format!(
        "wsgate-fuzz-config-{}-{thread}.toml",
        std::process::id()
    ))
}

/// Whatever the input: an error names the key it is about (or is about the
/// file as a whole), and an accepted configuration is valid and survives a
/// trip through TOML unchanged.
pub fn check_config(result: Result<Config, ConfigError>) {
    match result {
        Err(ConfigError::Invalid { key, message }) => {
            assert!(!key.is_empty(), "error without a key: {message}");
        }
        Err(ConfigError::Load(_)) => {}
        Ok(config) => {
            config.validate().expect("a loaded config is valid");
            let text = toml::to_string(&config).expect("a loaded config renders as TOML");
            let path = scratch_file().with_extension("roundtrip.toml");
            std::fs::write(&path, &text).expect("write the scratch config file");
            let again = Config::load_with_env(Some(&path), Vec::new())
                .unwrap_or_else(|e| panic!("{e}\nwhen reloading\n{text}"));
            let _ = std::fs::remove_file(&path);
            assert_eq!(toml::to_string(&again).unwrap(), text);
        }
    }
}

/// A target's entry point.
pub type Target = fn(&[u8]);

/// The entry point of each target, by its name (the folder names under
/// `fuzz/regressions/` and `fuzz/seeds/`).
pub const TARGETS: [(&str, Target); 4] = [
    ("frame_parser", frame_parser),
    ("envelope_decoder", envelope_decoder),
    ("config_loader", config_loader),
    ("ws_decoder", ws_decoder),
];

/// `ws_decoder`: the bytes as what a client sent on a WebSocket, after the
/// first byte (which sets how the bytes arrive: the read size, 1 to 256).
/// Decoded all at once and read by read, the same frames or the same
/// violation must come out, whatever the split; and every frame keeps the
/// RFC's bounds (a control frame whole and at most 125 bytes, a data frame
/// at most the limit).
pub fn ws_decoder(data: &[u8]) {
    use bytes::BytesMut;
    use wsgate::ws::frame::{MAX_CONTROL, decode};
    const MAX: usize = 1024;
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = chunk as usize + 1;
    let mut whole = BytesMut::from(data);
    let mut at_once = Vec::new();
    let at_once_end = loop {
        match decode(&mut whole, MAX) {
            Ok(Some(frame)) => at_once.push(frame),
            Ok(None) => break Ok(whole.len()),
            Err(v) => break Err(v),
        }
    };
    let mut buf = BytesMut::new();
    let mut in_reads = Vec::new();
    let mut rest = data;
    let in_reads_end = 'reads: loop {
        loop {
            match decode(&mut buf, MAX) {
                Ok(Some(frame)) => in_reads.push(frame),
                Ok(None) => break,
                Err(v) => break 'reads Err(v),
            }
        }
        if rest.is_empty() {
            break Ok(buf.len());
        }
        let (read, later) = rest.split_at(chunk.min(rest.len()));
        buf.extend_from_slice(read);
        rest = later;
    };
    assert_eq!(at_once, in_reads, "frames depend on how the bytes arrived");
    assert_eq!(
        at_once_end, in_reads_end,
        "the end depends on how the bytes arrived"
    );
    for f in &at_once {
        if f.is_control() {
            assert!(
                f.fin && f.payload.len() <= MAX_CONTROL,
                "control frame out of bounds"
            );
        } else {
            assert!(f.payload.len() <= MAX, "data frame over the limit");
        }
    }
}
