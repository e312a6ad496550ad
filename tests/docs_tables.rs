//! The reference tables users read (README.md, docs/protocol.md) against the
//! code they describe: every metric with its labels, every configuration
//! key, every close code with its reason text, every request and API error
//! code. A change to one without the other fails here.

use std::collections::{BTreeMap, BTreeSet};

use wsgate::config::Config;
use wsgate::metrics::Metrics;
use wsgate::protocol::{ApiErrorCode, CloseCode, ErrorCode};

fn read(path: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows of the Markdown table whose header starts with `header`.
fn table(doc: &str, header: &[&str]) -> Vec<Vec<String>> {
    let lines: Vec<&str> = doc.lines().collect();
    let start = lines
        .iter()
        .position(|l| {
            let cells: Vec<&str> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            l.starts_with('|') && cells.len() >= header.len() && cells[..header.len()] == *header
        })
        .unwrap_or_else(|| panic!("no table whose header starts with {header:?}"));
    lines[start + 2..]
        .iter()
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

fn unquote(cell: &str) -> String {
    cell.trim().trim_matches('`').trim().to_string()
}

/// `name{label="value",...}` series of the exposition, as name -> label -> values.
type Families = BTreeMap<String, (String, BTreeMap<String, BTreeSet<String>>)>;

fn exposed() -> Families {
    let text = Metrics::new().render();
    let mut families = Families::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.insert(name.into(), (kind.into(), BTreeMap::new()));
        } else if !line.starts_with('#') && line.contains('{') {
            let (series, _) = line.split_once('{').unwrap();
            let family = families
                .keys()
                .filter(|f| series.starts_with(f.as_str()))
                .max_by_key(|f| f.len())
                .cloned()
                .unwrap();
            let labels = line.split_once('{').unwrap().1.split_once('}').unwrap().0;
            for pair in labels.split(',') {
                let (k, v) = pair.split_once('=').unwrap();
                if k == "le" {
                    continue; // histogram buckets
                }
                let entry = families.get_mut(&family).unwrap();
                entry
                    .1
                    .entry(k.into())
                    .or_default()
                    .insert(v.trim_matches('"').into());
            }
        }
    }
    families
}

#[test]
fn readme_metrics_table_lists_every_metric_and_label_value() {
    let readme = read("README.md");
    let mut documented = Families::new();
    for row in table(&readme, &["metric"]) {
        let name = unquote(&row[0]);
        let mut labels = BTreeMap::new();
        let cell = row[2].trim();
        if !cell.is_empty() {
            for part in cell.split(';') {
                let (label, values) = part
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{name}: labels cell {cell:?}"));
                let values = values.split(',').map(unquote).collect::<BTreeSet<_>>();
                labels.insert(unquote(label), values);
            }
        }
        documented.insert(name, (row[1].trim().to_string(), labels));
    }
    let exposed = exposed();
    let names = |f: &Families| f.keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(
        names(&documented),
        names(&exposed),
        "README's metrics table and the exposed metrics differ (left: README)"
    );
    // Label values that come from the build, not from an enum: the README
    // names these labels with a placeholder for their values.
    let free_form = ["wsgate_build_info"];
    for (name, (kind, labels)) in &exposed {
        let (doc_kind, doc_labels) = &documented[name];
        assert_eq!(doc_kind, kind, "{name}: type");
        if free_form.contains(&name.as_str()) {
            let names =
                |l: &BTreeMap<String, BTreeSet<String>>| l.keys().cloned().collect::<Vec<_>>();
            assert_eq!(
                names(doc_labels),
                names(labels),
                "{name}: labels (left: README)"
            );
            continue;
        }
        assert_eq!(doc_labels, labels, "{name}: label values (left: README)");
    }
}

#[test]
fn readme_configuration_table_lists_every_key() {
    let readme = read("README.md");
    let documented: BTreeSet<String> = table(&readme, &["key", "default"])
        .iter()
        .map(|row| unquote(&row[0]))
        .collect();
    let value = toml::Value::try_from(Config::default()).unwrap();
    let mut keys = BTreeSet::new();
    for (section, table) in value.as_table().unwrap() {
        for key in table.as_table().unwrap().keys() {
            keys.insert(format!("{section}.{key}"));
        }
    }
    // Keys that are unset by default serialize to nothing: list them here,
    // so a new optional key still has to be documented.
    for optional in [
        "server.node_id",
        "api.key_file",
        "database.url",
        "auth.query",
        "redis.url",
        "redis.tls_ca_file",
        "redis.tls_cert_file",
        "redis.tls_key_file",
        "auth.jwt_secret",
        "auth.jwt_public_key_file",
        "auth.jwt_jwks_url",
        "auth.jwt_issuer",
        "auth.jwt_audience",
        "occupancy.webhook_url",
        "occupancy.webhook_secret",
        "authorize.hook_url",
        "authorize.hook_secret",
        "authorize.hook_api_key",
        "authorize.grant_secret",
    ] {
        keys.insert(optional.to_string());
    }
    assert_eq!(
        documented, keys,
        "README's configuration table (left) and Config's keys differ"
    );
}

#[test]
fn protocol_close_code_table_matches_the_codes() {
    let doc = read("docs/protocol.md");
    let documented: BTreeMap<u16, String> = table(&doc, &["code", "reason text"])
        .into_iter()
        .filter_map(|row| Some((row[0].parse().ok()?, unquote(&row[1]))))
        .collect();
    let ours: BTreeMap<u16, String> = CloseCode::ALL
        .iter()
        // The contract's 1000 and 1008, which wsgate never sends, are
        // explained below the table rather than listed in it.
        .filter(|c| ![1000, 1008].contains(&c.code()))
        .map(|c| (c.code(), c.reason().to_string()))
        .collect();
    assert_eq!(
        documented, ours,
        "docs/protocol.md close codes (left) and CloseCode differ"
    );
}

#[test]
fn protocol_error_tables_match_the_codes() {
    let doc = read("docs/protocol.md");
    let request: BTreeSet<String> = table(&doc, &["code", "when"])
        .into_iter()
        .map(|row| unquote(&row[0]))
        .collect();
    let ours: BTreeSet<String> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_string())
        .collect();
    assert_eq!(
        request, ours,
        "docs/protocol.md request errors (left) and ErrorCode differ"
    );

    let api: BTreeMap<String, u16> = table(&doc, &["status"])
        .into_iter()
        .map(|row| (unquote(&row[1]), row[0].parse().unwrap()))
        .collect();
    let ours: BTreeMap<String, u16> = ApiErrorCode::ALL
        .iter()
        .filter_map(|c| Some((c.as_str().to_string(), c.status()?)))
        .collect();
    assert_eq!(
        api, ours,
        "docs/protocol.md API errors (left) and ApiErrorCode differ"
    );
}
