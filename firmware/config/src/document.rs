//! The JSON document form of the configuration: what export writes and what
//! import and provisioning read. Sections sit at the top level beside a few
//! metadata keys; documents of older schema versions are migrated on the way in.

use serde_json::{Map, Value};

use crate::ConfigError;
use crate::schema::Config;

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Top-level keys of a document that are not sections.
const METADATA_KEYS: &[&str] = &["schema_version", "revision", "exported_at", "comment", "author"];

/// Upgrades a document (sections at top level) by one schema version.
pub type Migration = fn(&mut Map<String, Value>) -> Result<(), String>;

/// `MIGRATIONS[i]` upgrades a document from version `i + 1` to `i + 2`.
/// Add one here, and bump [`SCHEMA_VERSION`], whenever a stored shape changes.
pub const MIGRATIONS: &[Migration] = &[];

/// Runs `migrations` on `doc` from version `from` up to `to`.
pub fn migrate_with(
    doc: &mut Map<String, Value>,
    from: u32,
    to: u32,
    migrations: &[Migration],
) -> Result<(), ConfigError> {
    if from == 0 {
        return Err(ConfigError::Document("schema_version must be 1 or higher".into()));
    }
    if from > to {
        return Err(ConfigError::Document(format!(
            "the document has schema version {from}, newer than this firmware understands ({to}); update the firmware first"
        )));
    }
    for version in from..to {
        let step = migrations
            .get((version - 1) as usize)
            .ok_or_else(|| ConfigError::Document(format!("no migration from schema version {version}")))?;
        step(doc).map_err(|e| ConfigError::Document(format!("migrating from schema version {version}: {e}")))?;
    }
    Ok(())
}

/// Parses a document into a configuration. Missing sections and fields take
/// their defaults; unknown ones are errors naming the path.
pub fn parse_document(bytes: &[u8]) -> Result<Config, ConfigError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| ConfigError::Document(format!("not valid JSON: {e}")))?;
    config_from_value(value)
}

pub fn config_from_value(value: Value) -> Result<Config, ConfigError> {
    let Value::Object(mut doc) = value else {
        return Err(ConfigError::Document("the document must be a JSON object".into()));
    };
    let version = match doc.get("schema_version") {
        None => SCHEMA_VERSION,
        Some(v) => v
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| ConfigError::Document("schema_version must be a positive integer".into()))?,
    };
    for key in METADATA_KEYS {
        doc.remove(*key);
    }
    migrate_with(&mut doc, version, SCHEMA_VERSION, MIGRATIONS)?;
    typed(Value::Object(doc))
}

/// Deserializes with the failing field's path in the message.
pub fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::Document(if path == "." { e.inner().to_string() } else { format!("{path}: {}", e.inner()) })
    })
}

/// The document form of `config` (already redacted as the caller wants).
pub fn to_document(config: &Config, revision: u64, exported_at: &str) -> Value {
    let mut doc = Map::new();
    doc.insert("schema_version".into(), SCHEMA_VERSION.into());
    doc.insert("revision".into(), revision.into());
    doc.insert("exported_at".into(), exported_at.into());
    if let Ok(Value::Object(sections)) = serde_json::to_value(config) {
        doc.extend(sections);
    }
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn partial_documents_take_defaults() {
        let config = parse_document(br#"{"sip": {"domain": "shop.example"}}"#).expect("parse");
        assert_eq!(config.sip.domain, "shop.example");
        assert_eq!(config.sip.udp_port, 5060);
        assert_eq!(config.network.admin_https_port, 8443);
    }

    #[test]
    fn the_contract_example_parses() {
        let doc = json!({
            "admin": {"password": "installer-pw"},
            "sip": {"domain": "branch.example",
                    "users": [{"username": "1001", "password": "pw1001"}],
                    "trunks": [{"name": "pstn", "host": "127.0.0.1", "port": 5090, "transport": "udp",
                                "register": false, "username": null, "password": null, "priority": 10}],
                    "routes": [{"prefix": "9", "strip": 1, "trunk": "pstn"}]},
            "turn": {"realm": "branch.example", "users": [{"username": "test", "password": "secret"}],
                     "auth_secret": null, "allowed_peers": ["127.0.0.1/32"]}
        });
        let config = config_from_value(doc).expect("parse");
        assert_eq!(config.sip.routes[0].trunk, "pstn");
        assert_eq!(config.turn.allowed_peers[0].to_string(), "127.0.0.1/32");
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse_document(br#"{"sip": {"trunks": [{"port": 70000}]}}"#).expect_err("port too big");
        assert!(err.to_string().contains("sip.trunks[0].port"), "{err}");
        let err = parse_document(br#"{"sip": {"domian": "x"}}"#).expect_err("typo");
        assert!(err.to_string().contains("domian"), "{err}");
        let err = parse_document(b"{not json").expect_err("syntax");
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        let err = parse_document(b"[1]").expect_err("array");
        assert!(err.to_string().contains("JSON object"), "{err}");
    }

    #[test]
    fn newer_schema_is_refused() {
        let err = parse_document(br#"{"schema_version": 99}"#).expect_err("newer");
        assert!(err.to_string().contains("newer than this firmware"), "{err}");
    }

    #[test]
    fn migrations_run_in_order() {
        fn rename_realm(doc: &mut Map<String, Value>) -> Result<(), String> {
            let turn = doc.get_mut("turn").and_then(Value::as_object_mut).ok_or("no turn section")?;
            if let Some(realm) = turn.remove("turn_realm") {
                turn.insert("realm".into(), realm);
            }
            Ok(())
        }
        fn add_marker(doc: &mut Map<String, Value>) -> Result<(), String> {
            let turn = doc.get_mut("turn").and_then(Value::as_object_mut).ok_or("no turn section")?;
            let realm = turn.get("realm").and_then(Value::as_str).ok_or("realm missing")?.to_uppercase();
            turn.insert("realm".into(), realm.into());
            Ok(())
        }
        let mut doc = json!({"turn": {"turn_realm": "old.example"}}).as_object().cloned().expect("object");
        migrate_with(&mut doc, 1, 3, &[rename_realm, add_marker]).expect("migrate");
        assert_eq!(doc["turn"]["realm"], "OLD.EXAMPLE");
        let mut broken = json!({}).as_object().cloned().expect("object");
        let err = migrate_with(&mut broken, 1, 2, &[rename_realm]).expect_err("fails");
        assert!(err.to_string().contains("no turn section"), "{err}");
        let err = migrate_with(&mut broken, 1, 3, &[rename_realm]).expect_err("missing step");
        assert!(err.to_string().contains("schema version"), "{err}");
    }
}
