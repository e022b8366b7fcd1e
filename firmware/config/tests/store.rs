//! The store against a real sled directory: revisions, confirm/auto-revert in
//! virtual time, import of bad documents, recovery, and crash consistency.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use branchgate_config::*;
use serde_json::json;

const T0: u64 = 1_800_000_000_000;
/// The default `admin.confirm_timeout_seconds`, in milliseconds.
const CONFIRM_MS: u64 = 90_000;

fn initial() -> Config {
    let mut config = Config::default();
    config.admin.password = HashedSecret::new("initial-password");
    config
}

fn open_initialized(dir: &Path) -> ConfigStore {
    let store = ConfigStore::open(dir, T0).expect("open");
    if store.is_empty() {
        store
            .apply(initial(), ApplyOptions::new("system", "initial configuration").confirm(Confirm::Never), T0)
            .expect("initial apply");
    }
    store
}

#[test]
fn revisions_are_immutable_and_restorable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_initialized(dir.path());
    assert_eq!(store.current().revision, 1);
    let mut rx = store.subscribe();

    let outcome = store
        .apply_section("sip", json!({"domain": "shop.example"}), ApplyOptions::new("admin", "domain"), T0 + 1)
        .expect("apply");
    assert_eq!(outcome.revision, 2);
    assert!(outcome.changed);
    assert!(outcome.pending_confirm.is_none());
    assert!(rx.has_changed().expect("watch"));
    assert_eq!(rx.borrow_and_update().config.sip.domain, "shop.example");

    let same =
        store.apply_section("sip", json!({"domain": "shop.example"}), ApplyOptions::new("admin", "again"), T0 + 2);
    assert!(!same.expect("apply").changed, "an identical change makes no revision");

    let history = store.history(10).expect("history");
    assert_eq!(history.iter().map(|r| r.revision).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(history[0].author, "admin");

    let old = store.revision(1).expect("read").expect("exists");
    assert_eq!(old.config.sip.domain, "branch.example");
    let changes = diff(
        &serde_json::to_value(&old.config).expect("json"),
        &serde_json::to_value(&store.current().config).expect("json"),
    );
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].path, "sip.domain");

    let restored = store.restore(1, "admin", T0 + 3).expect("restore");
    assert_eq!(restored.revision, 3);
    assert_eq!(store.current().config.sip.domain, "branch.example");
    assert!(matches!(store.restore(99, "admin", T0 + 4), Err(ConfigError::NoSuchRevision(99))));
}

#[test]
fn invalid_changes_are_refused_with_field_errors_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_initialized(dir.path());
    let before = store.current();
    let err = store
        .apply_section(
            "sip",
            json!({"trunks": [{"name": "pstn", "host": "bad host", "port": 5090}], "routes": [{"prefix": "9", "trunk": "nope"}]}),
            ApplyOptions::new("admin", "bad"),
            T0 + 1,
        )
        .expect_err("invalid");
    let fields: Vec<_> = field_errors(&err).expect("field errors").iter().map(|e| e.path.clone()).collect();
    assert!(fields.contains(&"sip.trunks[0].host".to_string()), "{fields:?}");
    assert!(fields.contains(&"sip.routes[0].trunk".to_string()), "{fields:?}");

    let err = store
        .apply_section("sip", json!({"udp_port": "five"}), ApplyOptions::new("admin", "bad"), T0 + 1)
        .expect_err("type error");
    assert!(err.to_string().contains("sip.udp_port"), "{err}");
    let err = store.apply_section("nope", json!({}), ApplyOptions::new("admin", "bad"), T0 + 1).expect_err("section");
    assert!(matches!(err, ConfigError::UnknownSection(_)));

    for bad in [&b"{"[..], b"[]", b"{\"sip\": {\"users\": 5}}", b"{\"schema_version\": 42}", b"\xff\xfe"] {
        assert!(store.import(bad, ApplyOptions::new("admin", "import"), T0 + 2).is_err());
    }
    assert_eq!(store.current(), before);
    assert_eq!(store.history(10).expect("history").len(), 1);
}

#[test]
fn risky_changes_roll_back_unless_confirmed_even_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open_initialized(dir.path());
        let outcome = store
            .apply_section("network", json!({"admin_https_port": 9443}), ApplyOptions::new("admin", "port"), T0)
            .expect("apply");
        let pending = outcome.pending_confirm.expect("pending");
        assert_eq!(pending.previous_revision, 1);
        assert_eq!(pending.deadline_ms, T0 + CONFIRM_MS);
        assert_eq!(store.expire_pending(T0 + 1000).expect("check"), None, "not yet");
        // A harmless change while pending keeps the pending deadline.
        let outcome = store
            .apply_section("system", json!({"hostname": "shop"}), ApplyOptions::new("admin", "name"), T0 + 2000)
            .expect("apply");
        assert_eq!(outcome.pending_confirm, Some(pending));
    }
    // The box restarts before the deadline; the deadline persists.
    let store = ConfigStore::open(dir.path(), T0 + 5000).expect("reopen");
    assert_eq!(store.current().config.network.admin_https_port, 9443);
    let rolled = store.expire_pending(T0 + CONFIRM_MS).expect("expire").expect("rolled back");
    assert!(rolled.changed);
    let current = store.current();
    assert_eq!(current.config.network.admin_https_port, 8443);
    assert_eq!(current.config.system.hostname, "shop", "changes made meanwhile elsewhere stay");
    assert!(store.pending().is_none());
    assert!(store.history(1).expect("history")[0].comment.contains("automatic rollback"));

    // Confirmed changes stay.
    let outcome = store
        .apply_section("network", json!({"admin_https_port": 9443}), ApplyOptions::new("admin", "port"), T0 + 200_000)
        .expect("apply");
    assert!(outcome.pending_confirm.is_some());
    let pending = outcome.pending_confirm.clone().expect("pending").revision;
    assert!(matches!(store.confirm(Some(pending + 7)), Err(ConfigError::Conflict(_))), "only the change one saw");
    assert!(store.confirm(Some(pending)).expect("confirm"));
    assert_eq!(store.expire_pending(T0 + 10_000_000).expect("expire"), None);
    assert_eq!(store.current().config.network.admin_https_port, 9443);
}

#[test]
fn export_import_round_trip_keeps_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_initialized(dir.path());
    store
        .apply_section(
            "turn",
            json!({"users": [{"username": "test", "password": "secret"}], "auth_secret": "rest-api-secret"}),
            ApplyOptions::new("admin", "turn"),
            T0 + 1,
        )
        .expect("apply");
    let export = store.export(Redaction::PlainSecrets, "now");
    let text = export.to_string();
    assert!(!text.contains("rest-api-secret"), "plain secrets are redacted");
    assert!(!text.contains("\"secret\""), "passwords are hashed");
    assert!(!text.contains("initial-password"));

    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = open_initialized(other_dir.path());
    other.import(text.as_bytes(), ApplyOptions::new("admin", "restore"), T0 + 2).expect("import");
    let imported = other.current();
    assert!(imported.config.admin.password.verify_argon2("initial-password"));
    assert_eq!(imported.config.turn.users, store.current().config.turn.users);
    // Redacted plain secrets keep the target's own value (here: none).
    assert_eq!(imported.config.turn.auth_secret, None);

    let full = store.export(Redaction::None, "now").to_string();
    assert!(full.contains("rest-api-secret"));
}

#[test]
fn a_damaged_database_is_recovered_from_the_last_known_good_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open_initialized(dir.path());
        store
            .apply_section("system", json!({"hostname": "shop"}), ApplyOptions::new("admin", "name"), T0 + 1)
            .expect("apply");
    }
    // Overwrite every file of the sled directory with garbage.
    for entry in walk(&dir.path().join("config.sled")) {
        std::fs::write(&entry, vec![0x5a; 4096]).expect("corrupt");
    }
    let store = ConfigStore::open(dir.path(), T0 + 10).expect("open recovers");
    let notice = store.recovery_notice().expect("notice");
    assert!(notice.contains("last-known-good"), "{notice}");
    assert_eq!(store.current().revision, 2);
    assert_eq!(store.current().config.system.hostname, "shop");
    assert!(
        std::fs::read_dir(dir.path()).expect("list").any(|e| {
            e.map(|e| e.file_name().to_string_lossy().starts_with("config.sled.damaged-")).unwrap_or(false)
        })
    );
    // And the recovered store works normally.
    store
        .apply_section("system", json!({"hostname": "shop2"}), ApplyOptions::new("admin", "name"), T0 + 11)
        .expect("apply");
    drop(store);
    let store = ConfigStore::open(dir.path(), T0 + 12).expect("reopen");
    assert!(store.recovery_notice().is_none());
    assert_eq!(store.current().config.system.hostname, "shop2");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Child half of the crash test: applies revisions as fast as it can and
/// prints each acknowledged revision number.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var("BRANCHGATE_CRASH_CHILD_DIR") else {
        return;
    };
    let store = open_initialized(Path::new(&dir));
    let mut n = store.current().revision;
    loop {
        n += 1;
        let outcome = store
            .apply_section(
                "sip",
                json!({"domain": format!("d{n}.example"), "emergency_numbers": [n.to_string()]}),
                ApplyOptions::new("crash", format!("n={n}")),
                T0 + n,
            )
            .expect("apply");
        println!("ACK {} {}", outcome.revision, n);
    }
}

/// 100 `kill -9` at random moments during applies: on reopen the current
/// configuration is always one complete revision, and no acknowledged revision is lost.
#[test]
fn kill_minus_nine_during_applies_leaves_one_complete_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("exe");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..100 {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child_writer", "--nocapture", "--test-threads=1"])
            .env("BRANCHGATE_CRASH_CHILD_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let lines_before_kill = 1 + seed % 20;
        let stdout = child.stdout.take().expect("stdout");
        let mut acked = 0u64;
        let started = Instant::now();
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let mut seen = 0;
        while seen < lines_before_kill && started.elapsed() < Duration::from_secs(20) {
            line.clear();
            if reader.read_line(&mut line).expect("read") == 0 {
                break;
            }
            if let Some(rest) = line.trim().strip_prefix("ACK ") {
                acked = rest.split(' ').next().and_then(|r| r.parse().ok()).unwrap_or(acked);
                seen += 1;
            }
        }
        // SIGKILL, mid-apply most of the time.
        child.kill().expect("kill");
        child.wait().expect("wait");

        let store = ConfigStore::open(dir.path(), T0).expect("reopen after kill");
        assert!(store.recovery_notice().is_none(), "round {round}: {:?}", store.recovery_notice());
        let current = store.current();
        assert!(
            current.revision >= acked,
            "round {round}: acknowledged revision {acked} lost (now {})",
            current.revision
        );
        let stored = store.revision(current.revision).expect("read").expect("current revision exists");
        assert_eq!(stored.config, current.config);
        if current.revision > 1 {
            let n = stored.info.comment.trim_start_matches("n=");
            assert_eq!(current.config.sip.domain, format!("d{n}.example"), "round {round}: torn revision");
            assert_eq!(current.config.sip.emergency_numbers, [n.to_string()], "round {round}: torn revision");
        }
        assert!(current.config.validate().is_empty());
        let history = store.history(usize::MAX).expect("history");
        assert_eq!(history.len() as u64, current.revision, "round {round}: revisions are contiguous");
    }
}

#[test]
fn a_second_process_on_the_same_directory_is_refused_without_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_initialized(dir.path());
    let err = ConfigStore::open(dir.path(), T0).expect_err("locked");
    assert!(matches!(err, ConfigError::Locked(_)), "{err}");
    assert!(dir.path().join("config.sled").exists());
    assert_eq!(store.current().revision, 1);
}

#[test]
fn a_factory_reset_runs_at_the_next_open_with_or_without_the_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open_initialized(dir.path());
        store
            .apply_section("sip", json!({"domain": "shop.example"}), ApplyOptions::new("admin", "domain"), T0 + 1)
            .expect("apply");
        assert!(store.factory_reset().is_none());
    }
    std::fs::write(dir.path().join("cdr.jsonl"), b"{}\n").expect("cdr");
    let keep = FactoryReset { keep_config: true, by: "admin".into(), requested_ms: T0 };
    request_factory_reset(dir.path(), &keep).expect("request");
    {
        let store = ConfigStore::open(dir.path(), T0 + 2).expect("open");
        let done = store.factory_reset().expect("carried out");
        assert_eq!(done.removed, ["cdr.jsonl"]);
        assert_eq!(store.current().config.sip.domain, "shop.example", "configuration kept");
    }
    request_factory_reset(dir.path(), &FactoryReset { keep_config: false, ..keep }).expect("request");
    let store = ConfigStore::open(dir.path(), T0 + 3).expect("open");
    assert!(store.factory_reset().is_some());
    assert!(store.is_empty(), "a new box: the first start runs again");
    assert!(!dir.path().join(FACTORY_RESET_FILE).exists());
}
