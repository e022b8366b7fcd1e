//! Bundles end to end: create → verify, tampering, foreign signers, RAUC itself as the peer
//! (`rauc info` reads our bundles, we read `rauc bundle`'s), the verity tree against
//! `veritysetup`, and installs into the simulated slots.
//!
//! The PKI is made here, per test (a throw-away CA and signer, EC P-256); no key is committed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use branchgate_update::bundle::{BundleError, CreateOptions, Keyring, verify};
use branchgate_update::slots::{SimulatedSlots, SlotBackend};
use branchgate_update::{Agent, InstallState, InstallTracker, Manifest};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, KeyUsage};
use openssl::x509::{X509, X509NameBuilder};

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    PKey::from_ec_key(EcKey::generate(&group).expect("key")).expect("pkey")
}

fn certificate(cn: &str, key: &PKey<Private>, issuer: Option<(&X509, &PKey<Private>)>, ca: bool) -> X509 {
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_nid(Nid::COMMONNAME, cn).expect("cn");
    let name = name.build();
    let mut builder = X509::builder().expect("builder");
    builder.set_version(2).expect("v3");
    let serial = BigNum::from_u32(rand_serial()).and_then(|n| n.to_asn1_integer()).expect("serial");
    builder.set_serial_number(&serial).expect("serial");
    builder.set_subject_name(&name).expect("subject");
    builder.set_issuer_name(issuer.map_or(&name, |(cert, _)| cert.subject_name())).expect("issuer");
    builder.set_pubkey(key).expect("pubkey");
    builder.set_not_before(&Asn1Time::days_from_now(0).expect("time")).expect("nb");
    builder.set_not_after(&Asn1Time::days_from_now(30).expect("time")).expect("na");
    if ca {
        builder.append_extension(BasicConstraints::new().critical().ca().build().expect("bc")).expect("bc");
        builder
            .append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build().expect("ku"))
            .expect("ku");
    } else {
        builder.append_extension(KeyUsage::new().critical().digital_signature().build().expect("ku")).expect("ku");
    }
    builder.sign(issuer.map_or(key, |(_, k)| k), MessageDigest::sha256()).expect("sign");
    builder.build()
}

fn rand_serial() -> u32 {
    let mut bytes = [0u8; 4];
    openssl::rand::rand_bytes(&mut bytes).expect("rand");
    u32::from_be_bytes(bytes) >> 1
}

/// A CA (its PEM is the keyring) and a signer it issued, written into `dir`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &Path, name: &str) -> Pki {
    let ca_key = key();
    let ca = certificate(&format!("{name} CA"), &ca_key, None, true);
    let signer_key = key();
    let signer = certificate(&format!("{name} signer"), &signer_key, Some((&ca, &ca_key)), false);
    let pki = Pki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-signer.pem")),
        key: dir.join(format!("{name}-signer.key")),
    };
    std::fs::write(&pki.ca, ca.to_pem().expect("pem")).expect("write");
    std::fs::write(&pki.cert, signer.to_pem().expect("pem")).expect("write");
    std::fs::write(&pki.key, signer_key.private_key_to_pem_pkcs8().expect("pem")).expect("write");
    pki
}

/// A rootfs image that compresses badly (so the squashfs exceeds a few blocks).
fn rootfs(dir: &Path, bytes: usize) -> PathBuf {
    let mut data = vec![0u8; bytes];
    openssl::rand::rand_bytes(&mut data).expect("rand");
    let path = dir.join("rootfs.img");
    std::fs::write(&path, data).expect("write");
    path
}

fn create(dir: &Path, pki: &Pki, version: &str, compatible: &str, image: &Path) -> (PathBuf, Manifest) {
    let output = dir.join(format!("bundle-{version}-{compatible}.raucb"));
    let manifest = branchgate_update::create(&CreateOptions {
        cert: pki.cert.clone(),
        key: pki.key.clone(),
        intermediates: vec![],
        compatible: compatible.into(),
        version: version.into(),
        build: Some("test".into()),
        rootfs: image.to_path_buf(),
        output: output.clone(),
    })
    .expect("bundle created");
    (output, manifest)
}

fn have(tool: &str) -> bool {
    let found =
        Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "\n*** SKIPPED: `{tool}` is not installed (apt-get install rauc squashfs-tools cryptsetup-bin) ***\n"
        );
    }
    found
}

const COMPATIBLE: &str = "branchgate-test";

#[test]
fn round_trip_and_refusals() {
    if !have("mksquashfs") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let vendor = pki(dir.path(), "vendor");
    let image = rootfs(dir.path(), 600 * 1024);
    let (bundle, created) = create(dir.path(), &vendor, "1.2.3", COMPATIBLE, &image);
    let keyring = Keyring::load(&vendor.ca).expect("keyring");
    let verified = verify(&bundle, &keyring).expect("our own bundle verifies");
    assert_eq!(verified, created);
    assert_eq!(verified.version, "1.2.3");
    assert_eq!(verified.build.as_deref(), Some("test"));
    let verity = verified.verity.clone().expect("verity keys");
    assert_eq!(verity.salt.len(), 64);
    let image_entry = verified.image("rootfs").expect("rootfs");
    assert_eq!(image_entry.size, 600 * 1024);

    let bytes = std::fs::read(&bundle).expect("read");
    let sig_len = u64::from_be_bytes(bytes[bytes.len() - 8..].try_into().expect("8 bytes")) as usize;
    let payload_len = bytes.len() - 8 - sig_len;
    assert_eq!(payload_len % 4096, 0);
    assert_eq!(((payload_len as u64) - verity.size) % 4096, 0);
    let write = |name: &str, data: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, data).expect("write");
        path
    };

    // Tampered payload: a byte of the squashfs, then one of the hash tree.
    let mut tampered = bytes.clone();
    tampered[10_000] ^= 0x40;
    let error = verify(&write("tampered.raucb", &tampered), &keyring).expect_err("tampered payload");
    assert!(matches!(error, BundleError::Tampered(_)), "{error}");
    assert!(error.to_string().starts_with("payload tampered: data block 2 "), "{error}");
    let mut tampered = bytes.clone();
    tampered[payload_len - 100] ^= 1;
    let error = verify(&write("tree.raucb", &tampered), &keyring).expect_err("tampered tree");
    assert!(matches!(error, BundleError::Tampered(_)), "{error}");

    // The signature's bytes: the signed manifest is inside it.
    let mut tampered = bytes.clone();
    let manifest_at = bytes.windows(7).rposition(|w| w == b"version").expect("manifest in the CMS");
    tampered[manifest_at + 8] = b'9';
    let error = verify(&write("sig.raucb", &tampered), &keyring).expect_err("changed manifest");
    assert!(matches!(error, BundleError::BadSignature(_)), "{error}");

    // Truncated, and not a bundle at all.
    let error = verify(&write("short.raucb", &bytes[..bytes.len() - 1000]), &keyring).expect_err("truncated");
    assert!(matches!(error, BundleError::NotABundle(_)), "{error}");
    let error = verify(&write("squashfs.img", &bytes[..payload_len]), &keyring).expect_err("unsigned");
    assert!(matches!(error, BundleError::NotABundle(_)), "{error}");
    assert!(error.to_string().starts_with("not a bundle"), "{error}");

    // Another vendor's CA, and a keyring that is not PEM.
    let other = pki(dir.path(), "other");
    let error = verify(&bundle, &Keyring::load(&other.ca).expect("keyring")).expect_err("other CA");
    assert!(matches!(error, BundleError::Untrusted(_)), "{error}");
    assert!(error.to_string().starts_with("not signed by a certificate of the keyring"), "{error}");
    let not_pem = write("not-pem.pem", b"hello");
    assert!(matches!(Keyring::load(&not_pem), Err(BundleError::Keyring { .. })));

    // Signed by the other vendor's signer: refused by ours, accepted by theirs.
    let (foreign, _) = create(dir.path(), &other, "1.2.4", COMPATIBLE, &image);
    assert!(matches!(verify(&foreign, &keyring), Err(BundleError::Untrusted(_))));
    verify(&foreign, &Keyring::load(&other.ca).expect("keyring")).expect("their own CA");

    // A key that does not belong to the certificate is refused at create time.
    let error = branchgate_update::create(&CreateOptions {
        cert: vendor.cert.clone(),
        key: other.key.clone(),
        intermediates: vec![],
        compatible: COMPATIBLE.into(),
        version: "1.0".into(),
        build: None,
        rootfs: image.clone(),
        output: dir.path().join("mismatch.raucb"),
    })
    .expect_err("key mismatch");
    assert!(error.to_string().contains("does the key match"), "{error}");
}

#[test]
fn tiny_images_are_refused_at_create_time() {
    if !have("mksquashfs") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let vendor = pki(dir.path(), "vendor");
    let small = dir.path().join("small.img");
    std::fs::write(&small, b"tiny").expect("write");
    let error = branchgate_update::create(&CreateOptions {
        cert: vendor.cert.clone(),
        key: vendor.key.clone(),
        intermediates: vec![],
        compatible: COMPATIBLE.into(),
        version: "1.0".into(),
        build: None,
        rootfs: small,
        output: dir.path().join("small.raucb"),
    })
    .expect_err("too small");
    assert!(error.to_string().contains("more than 4096"), "{error}");
}

/// The tree we append is byte for byte the one `veritysetup format --no-superblock` makes.
#[test]
fn verity_tree_matches_veritysetup() {
    if !have("mksquashfs") || !have("veritysetup") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let vendor = pki(dir.path(), "vendor");
    // Big enough for two tree levels (more than 128 data blocks).
    let image = rootfs(dir.path(), 700 * 1024);
    let (bundle, manifest) = create(dir.path(), &vendor, "1.0.0", COMPATIBLE, &image);
    let verity = manifest.verity.expect("verity");
    let bytes = std::fs::read(&bundle).expect("read");
    let sig_len = u64::from_be_bytes(bytes[bytes.len() - 8..].try_into().expect("8")) as usize;
    let payload = &bytes[..bytes.len() - 8 - sig_len];
    let data_len = payload.len() - verity.size as usize;
    assert!(data_len / 4096 > 128, "two levels");
    let data = dir.path().join("data.img");
    let hash = dir.path().join("hash.img");
    std::fs::write(&data, &payload[..data_len]).expect("write");
    let out = Command::new("veritysetup")
        .args(["format", "--no-superblock", "--hash=sha256", "--data-block-size=4096", "--hash-block-size=4096"])
        .arg(format!("--salt={}", verity.salt))
        .arg(&data)
        .arg(&hash)
        .output()
        .expect("veritysetup runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let root = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(str::trim)
        .expect("veritysetup prints the root hash");
    assert_eq!(root, verity.hash);
    assert_eq!(std::fs::read(&hash).expect("read"), &payload[data_len..]);
}

/// RAUC 1.8 reads our bundles: `rauc info --keyring CA` checks the signature and the manifest.
#[test]
fn rauc_info_accepts_our_bundle() {
    if !have("mksquashfs") || !have("rauc") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let vendor = pki(dir.path(), "vendor");
    let image = rootfs(dir.path(), 64 * 1024);
    let (bundle, manifest) = create(dir.path(), &vendor, "2.0.1", COMPATIBLE, &image);
    let out =
        Command::new("rauc").arg("info").arg("--keyring").arg(&vendor.ca).arg(&bundle).output().expect("rauc runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rauc info refused our bundle:\n{stdout}\n{stderr}");
    assert!(stderr.contains("Verified inline signature"), "{stderr}");
    let verity = manifest.verity.expect("verity");
    for expected in [
        format!("Compatible: \t'{COMPATIBLE}'"),
        "Version:    \t'2.0.1'".to_string(),
        "Bundle Format: \tverity".to_string(),
        format!("Verity Hash: \t'{}'", verity.hash),
        format!("Verity Salt: \t'{}'", verity.salt),
        format!("Verity Size: \t{}", verity.size),
        format!("Checksum:  {}", manifest.images[0].sha256),
    ] {
        assert!(stdout.contains(&expected), "missing {expected} in\n{stdout}");
    }
    // And RAUC refuses it with another CA, as we do.
    let other = pki(dir.path(), "other");
    let out = Command::new("rauc").arg("info").arg("--keyring").arg(&other.ca).arg(&bundle).output().expect("rauc");
    assert!(!out.status.success(), "rauc must refuse a foreign keyring");
}

/// The other direction: a bundle made by `rauc bundle` passes our verification.
#[test]
fn we_accept_a_bundle_made_by_rauc() {
    if !have("mksquashfs") || !have("rauc") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let vendor = pki(dir.path(), "vendor");
    let content = dir.path().join("content");
    std::fs::create_dir(&content).expect("mkdir");
    let image = rootfs(&content, 40 * 1024);
    std::fs::write(
        content.join("manifest.raucm"),
        format!("[update]\ncompatible={COMPATIBLE}\nversion=3.1.4\n\n[bundle]\nformat=verity\n\n[image.rootfs]\nfilename=rootfs.img\n"),
    )
    .expect("write");
    let bundle = dir.path().join("rauc-made.raucb");
    let out = Command::new("rauc")
        .arg("bundle")
        .arg("--cert")
        .arg(&vendor.cert)
        .arg("--key")
        .arg(&vendor.key)
        .arg(&content)
        .arg(&bundle)
        .output()
        .expect("rauc runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let manifest = verify(&bundle, &Keyring::load(&vendor.ca).expect("keyring")).expect("RAUC's bundle verifies");
    assert_eq!(manifest.version, "3.1.4");
    assert_eq!(manifest.image("rootfs").expect("rootfs").size, std::fs::metadata(&image).expect("meta").len());
    // And it installs into a simulated slot with the right bytes.
    let slots = SimulatedSlots::new(dir.path().join("firmware"), "3.0.0");
    let slot = slots.install(&bundle, &manifest, &mut |_| {}).expect("install");
    assert_eq!(std::fs::read(slots.image_path(&slot)).expect("slot"), std::fs::read(&image).expect("image"));
}

#[test]
fn agent_checks_policy_and_installs_into_the_inactive_slot() {
    if !have("mksquashfs") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let vendor = pki(dir.path(), "vendor");
    let image = rootfs(dir.path(), 300 * 1024);
    let firmware_dir = dir.path().join("firmware");
    let slots = Arc::new(SimulatedSlots::new(&firmware_dir, "1.0.0"));
    let agent = Agent {
        backend: slots.clone(),
        keyring: vendor.ca.clone(),
        compatible: COMPATIBLE.into(),
        running_version: "1.0.0".into(),
        tracker: InstallTracker::default(),
        history: branchgate_update::UpdateHistory::new(&firmware_dir),
        fleet: Default::default(),
        usb: Default::default(),
    };
    let (wrong, _) = create(dir.path(), &vendor, "1.1.0", "branchgate-other", &image);
    assert_eq!(agent.accept(&wrong, false).expect_err("wrong compatible").reason(), "incompatible");
    let (old, _) = create(dir.path(), &vendor, "0.9.0", COMPATIBLE, &image);
    let error = agent.accept(&old, false).expect_err("downgrade");
    assert_eq!(error.reason(), "downgrade");
    assert!(error.to_string().contains("0.9.0"), "{error}");
    agent.accept(&old, true).expect("downgrade allowed by configuration");
    let missing = Agent { keyring: dir.path().join("none.pem"), ..agent.clone() };
    assert!(missing.accept(&old, false).expect_err("no keyring").is_internal());

    let (good, _) = create(dir.path(), &vendor, "1.1.0", COMPATIBLE, &image);
    let manifest = agent.accept(&good, false).expect("accepted");
    assert!(agent.tracker.try_begin());
    agent.install_in_background(good.clone(), manifest, false, "tester");
    for _ in 0..500 {
        if matches!(agent.tracker.status().state, InstallState::Done | InstallState::Failed) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let status = agent.tracker.status();
    assert_eq!((status.state, status.progress, status.slot.as_deref()), (InstallState::Done, 100, Some("B")));
    assert_eq!(std::fs::read(firmware_dir.join("slot-B.img")).expect("slot B"), std::fs::read(&image).expect("img"));
    let table = slots.status().expect("status");
    assert_eq!(table.booted, "A");
    let b = &table.slots[1];
    assert_eq!(
        (b.name.as_str(), b.version.as_deref(), b.state.as_str(), b.booted),
        ("B", Some("1.1.0"), "installed", false)
    );
    let plan = slots.reboot().expect("reboot planned");
    assert_eq!((plan.slot.as_str(), plan.simulated), ("B", true));
    assert_eq!(slots.status().expect("status").pending_reboot.as_deref(), Some("B"));

    // A manifest that lies about the image (signed, but wrong hash) fails the install, and
    // the slot says so.
    let mut lying = agent.accept(&good, false).expect("accepted");
    lying.images[0].sha256 = "0".repeat(64);
    let error = slots.install(&good, &lying, &mut |_| {}).expect_err("hash mismatch");
    assert!(error.to_string().contains("does not match the manifest"), "{error}");
    assert_eq!(slots.status().expect("status").slots[1].state, "failed");
    assert!(!firmware_dir.join("slot-B.img.part").exists());
}
