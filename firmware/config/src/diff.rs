//! Differences between two JSON documents, for the history view.

use serde::Serialize;
use serde_json::Value;

/// One changed leaf. `old` is `None` for an added field, `new` for a removed one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    pub path: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// Every leaf that differs between `old` and `new`, in document order.
pub fn diff(old: &Value, new: &Value) -> Vec<Change> {
    let mut changes = Vec::new();
    walk("", old, new, &mut changes);
    changes
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") }
}

fn walk(path: &str, old: &Value, new: &Value, out: &mut Vec<Change>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, old_value) in a {
                match b.get(key) {
                    Some(new_value) => walk(&join(path, key), old_value, new_value, out),
                    None => out.push(Change { path: join(path, key), old: Some(old_value.clone()), new: None }),
                }
            }
            for (key, new_value) in b {
                if !a.contains_key(key) {
                    out.push(Change { path: join(path, key), old: None, new: Some(new_value.clone()) });
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let item_path = format!("{path}[{i}]");
                match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => walk(&item_path, x, y, out),
                    (x, y) => out.push(Change { path: item_path, old: x.cloned(), new: y.cloned() }),
                }
            }
        }
        _ if old != new => out.push(Change { path: path.to_string(), old: Some(old.clone()), new: Some(new.clone()) }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_changed_added_and_removed_leaves() {
        let old = json!({"sip": {"domain": "a", "users": [{"username": "1"}]}, "x": 1});
        let new = json!({"sip": {"domain": "b", "users": [{"username": "1"}, {"username": "2"}]}, "y": 2});
        let changes = diff(&old, &new);
        let paths: Vec<_> = changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["sip.domain", "sip.users[1]", "x", "y"]);
        assert_eq!(changes[0].old, Some(json!("a")));
        assert_eq!(changes[2].new, None);
    }

    #[test]
    fn equal_documents_have_no_changes() {
        let doc = json!({"a": [1, {"b": null}]});
        assert!(diff(&doc, &doc).is_empty());
    }
}
