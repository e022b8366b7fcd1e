//! RAUC "verity" bundles: create, sign, verify.
//!
//! Layout (RAUC 1.8, `src/bundle.c`):
//!
//! ```text
//! +---------------------------------------------+ 0
//! | squashfs: manifest.raucm + the image files  |
//! | zero padding to a 4 KiB multiple             |
//! +---------------------------------------------+ data_size
//! | dm-verity hash tree (sha256, 4096/4096,      |
//! |   salt, no superblock)                       |
//! +---------------------------------------------+ data_size + verity-size
//! | CMS SignedData, DER, *encapsulating* the     |
//! |   manifest (an "inline" signature)           |
//! +---------------------------------------------+
//! | length of the CMS, big-endian u64            |
//! +---------------------------------------------+ file size
//! ```
//!
//! For verity bundles RAUC signs the manifest, not the payload: the CMS carries the manifest
//! (with `verity-hash`, `verity-salt`, `verity-size`), and the payload is bound to it by the
//! verity root hash. (The older "plain" format has a detached CMS over the whole squashfs; this
//! box neither makes nor accepts it.) Signing uses `CMS_BINARY | CMS_NOSMIMECAP` and checking
//! `CMS_verify(.., CMS_BINARY)` against the keyring, as RAUC's `src/signature.c`.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::pkey::PKey;
use openssl::stack::Stack;
use openssl::x509::X509;
use openssl::x509::store::{X509Store, X509StoreBuilder};
use sha2::{Digest, Sha256};

use crate::manifest::{Image, Manifest, ManifestError, VerityParams};
use crate::verity::{self, BLOCK, Layout};
use crate::version::{Version, VersionError};

/// RAUC refuses signatures larger than this; so do we.
pub const MAX_SIGNATURE_BYTES: u64 = 64 * 1024;
/// The name of the manifest inside the squashfs.
pub const MANIFEST_NAME: &str = "manifest.raucm";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("not a bundle (truncated or another kind of file): {0}")]
    NotABundle(String),
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("not signed by a certificate of the keyring: {0}")]
    Untrusted(String),
    #[error("keyring {}: {message}", path.display())]
    Keyring { path: PathBuf, message: String },
    #[error("invalid manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("unsupported bundle: {0}")]
    Unsupported(String),
    #[error("payload tampered: {0}")]
    Tampered(String),
    #[error("cannot create the bundle: {0}")]
    Create(String),
}

impl BundleError {
    /// A short, stable reason code (for the API and scripts).
    pub fn reason(&self) -> &'static str {
        match self {
            BundleError::Io { .. } => "io",
            BundleError::NotABundle(_) => "not_a_bundle",
            BundleError::BadSignature(_) => "bad_signature",
            BundleError::Untrusted(_) => "untrusted",
            BundleError::Keyring { .. } => "keyring",
            BundleError::Manifest(_) => "manifest",
            BundleError::Unsupported(_) => "unsupported",
            BundleError::Tampered(_) => "tampered",
            BundleError::Create(_) => "create",
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io { path: path.to_path_buf(), source }
}

fn openssl_text(stack: &openssl::error::ErrorStack) -> String {
    let reasons: Vec<String> = stack
        .errors()
        .iter()
        .map(|e| match e.data() {
            Some(data) => format!("{} ({data})", e.reason().unwrap_or("error")),
            None => e.reason().unwrap_or("error").to_string(),
        })
        .collect();
    if reasons.is_empty() { "OpenSSL gave no reason".to_string() } else { reasons.join("; ") }
}

/// The last 8 bytes: where the signature is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub signature_offset: u64,
    pub signature_len: u64,
}

impl Trailer {
    /// Reads the trailer of a bundle of `file_len` bytes whose last 8 bytes are `last8`.
    pub fn parse(file_len: u64, last8: [u8; 8]) -> Result<Trailer, BundleError> {
        if file_len < 8 + BLOCK {
            return Err(BundleError::NotABundle(format!("only {file_len} bytes")));
        }
        let signature_len = u64::from_be_bytes(last8);
        if signature_len == 0 {
            return Err(BundleError::NotABundle("no signature (length 0)".into()));
        }
        if signature_len > MAX_SIGNATURE_BYTES {
            return Err(BundleError::NotABundle(format!(
                "the trailer names a signature of {signature_len} bytes (at most {MAX_SIGNATURE_BYTES})"
            )));
        }
        let signature_offset = (file_len - 8)
            .checked_sub(signature_len)
            .ok_or_else(|| BundleError::NotABundle("the signature would start before the file".into()))?;
        Ok(Trailer { signature_offset, signature_len })
    }

    /// Where squashfs and hash tree lie, given the signed verity size.
    pub fn payload(&self, verity_size: u64) -> Result<(u64, Layout), BundleError> {
        let data_size = self.signature_offset.checked_sub(verity_size).ok_or_else(|| {
            BundleError::NotABundle(format!(
                "the manifest names a {verity_size}-byte hash tree but the payload has only {} bytes",
                self.signature_offset
            ))
        })?;
        if data_size == 0 || !data_size.is_multiple_of(BLOCK) || !verity_size.is_multiple_of(BLOCK) {
            return Err(BundleError::NotABundle(format!(
                "payload of {data_size} bytes and hash tree of {verity_size} bytes are not 4 KiB multiples"
            )));
        }
        let layout = Layout::new(data_size / BLOCK);
        if layout.levels.is_empty() {
            // One data block has no tree (the root hash is the block's own): RAUC refuses it.
            return Err(BundleError::NotABundle("a one-block payload has no hash tree".into()));
        }
        if layout.tree_bytes() != verity_size {
            return Err(BundleError::NotABundle(format!(
                "a {data_size}-byte payload has a {}-byte hash tree, the manifest says {verity_size}",
                layout.tree_bytes()
            )));
        }
        Ok((data_size, layout))
    }
}

/// The trusted CA certificates (a PEM file with one or more).
pub struct Keyring {
    store: X509Store,
    pub path: PathBuf,
    pub certificates: usize,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("path", &self.path).field("certificates", &self.certificates).finish()
    }
}

impl Keyring {
    pub fn load(path: &Path) -> Result<Keyring, BundleError> {
        let keyring_error = |message: String| BundleError::Keyring { path: path.to_path_buf(), message };
        let pem = std::fs::read(path).map_err(|e| keyring_error(e.to_string()))?;
        let certificates = X509::stack_from_pem(&pem).map_err(|e| keyring_error(openssl_text(&e)))?;
        if certificates.is_empty() {
            return Err(keyring_error("no PEM certificate in it".into()));
        }
        let mut builder = X509StoreBuilder::new().map_err(|e| keyring_error(openssl_text(&e)))?;
        let count = certificates.len();
        for certificate in certificates {
            builder.add_cert(certificate).map_err(|e| keyring_error(openssl_text(&e)))?;
        }
        Ok(Keyring { store: builder.build(), path: path.to_path_buf(), certificates: count })
    }
}

/// Checks a bundle: the CMS signature chain against `keyring`, the manifest, then the verity
/// hash tree against the signed root hash and the payload against the tree (streaming, two
/// 4 KiB buffers). Returns the signed manifest.
pub fn verify(bundle: &Path, keyring: &Keyring) -> Result<Manifest, BundleError> {
    verify_with_progress(bundle, keyring, &mut |_| {})
}

pub fn verify_with_progress(
    bundle: &Path,
    keyring: &Keyring,
    progress: &mut dyn FnMut(f32),
) -> Result<Manifest, BundleError> {
    let file = File::open(bundle).map_err(io_error(bundle))?;
    let file_len = file.metadata().map_err(io_error(bundle))?.len();
    let (trailer, manifest) = verify_signature(&file, file_len, bundle, keyring)?;
    if manifest.format.as_deref() != Some("verity") {
        return Err(BundleError::Unsupported(format!(
            "format '{}': only RAUC verity bundles are accepted",
            manifest.format.as_deref().unwrap_or("plain")
        )));
    }
    let Some(params) = &manifest.verity else {
        return Err(BundleError::Unsupported("a verity bundle without verity-hash/-salt/-size".into()));
    };
    let (data_size, layout) = trailer.payload(params.size)?;
    let root: [u8; 32] = hex::decode(&params.hash)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| BundleError::Manifest(ManifestError::Other("verity-hash is not 32 bytes of hex".into())))?;
    let salt = hex::decode(&params.salt)
        .map_err(|_| BundleError::Manifest(ManifestError::Other("verity-salt is not hex".into())))?;
    verity::verify(&file, &layout, data_size, &salt, &root, progress).map_err(|e| match e {
        verity::VerityError::Io(e) => BundleError::Io { path: bundle.to_path_buf(), source: e },
        other => BundleError::Tampered(other.to_string()),
    })?;
    Ok(manifest)
}

/// Reads the trailer of the file at `path`: is it shaped like a bundle at all?
pub fn check_trailer(path: &Path) -> Result<Trailer, BundleError> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path).map_err(io_error(path))?;
    let file_len = file.metadata().map_err(io_error(path))?.len();
    let mut last8 = [0u8; 8];
    if file_len >= 8 {
        file.read_exact_at(&mut last8, file_len - 8).map_err(io_error(path))?;
    }
    Trailer::parse(file_len, last8)
}

/// Reads and checks the signature only (what `rauc info` does); the payload is not read.
pub fn verify_signature(
    file: &File,
    file_len: u64,
    path: &Path,
    keyring: &Keyring,
) -> Result<(Trailer, Manifest), BundleError> {
    use std::os::unix::fs::FileExt;
    let mut last8 = [0u8; 8];
    if file_len >= 8 {
        file.read_exact_at(&mut last8, file_len - 8).map_err(io_error(path))?;
    }
    let trailer = Trailer::parse(file_len, last8)?;
    let mut der = vec![0u8; trailer.signature_len as usize];
    file.read_exact_at(&mut der, trailer.signature_offset).map_err(io_error(path))?;
    let mut cms = CmsContentInfo::from_der(&der)
        .map_err(|_| BundleError::NotABundle("no CMS signature where the trailer points".into()))?;
    let mut content = Vec::new();
    if let Err(stack) = cms.verify(None, Some(&keyring.store), None, Some(&mut content), CMSOptions::BINARY) {
        let text = openssl_text(&stack);
        return Err(if text.contains("certificate verify error") || text.contains("Verify error") {
            BundleError::Untrusted(text)
        } else if text.contains("no content") {
            BundleError::Unsupported("detached signature (a RAUC 'plain' bundle); only verity bundles".into())
        } else {
            BundleError::BadSignature(text)
        });
    }
    let manifest = Manifest::parse(&content)?;
    Ok((trailer, manifest))
}

/// What `branchgate bundle create` needs.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Intermediate certificates to embed (between the signer and the keyring's CA).
    pub intermediates: Vec<PathBuf>,
    pub compatible: String,
    pub version: String,
    pub build: Option<String>,
    pub rootfs: PathBuf,
    pub output: PathBuf,
}

fn sha256_file(path: &Path) -> Result<(String, u64), BundleError> {
    let mut reader = BufReader::with_capacity(1 << 16, File::open(path).map_err(io_error(path))?);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buffer).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

fn sign(options: &CreateOptions, content: &[u8]) -> Result<Vec<u8>, BundleError> {
    let read = |path: &Path| std::fs::read(path).map_err(io_error(path));
    let create =
        |what: &str, e: openssl::error::ErrorStack| BundleError::Create(format!("{what}: {}", openssl_text(&e)));
    let cert = X509::from_pem(&read(&options.cert)?).map_err(|e| create("signing certificate", e))?;
    let key = PKey::private_key_from_pem(&read(&options.key)?).map_err(|e| create("signing key", e))?;
    let mut chain = Stack::new().map_err(|e| create("certificate stack", e))?;
    for path in &options.intermediates {
        for certificate in X509::stack_from_pem(&read(path)?).map_err(|e| create("intermediate certificate", e))? {
            chain.push(certificate).map_err(|e| create("certificate stack", e))?;
        }
    }
    let cms = CmsContentInfo::sign(
        Some(&cert),
        Some(&key),
        Some(&chain),
        Some(content),
        CMSOptions::BINARY | CMSOptions::NOSMIMECAP,
    )
    .map_err(|e| create("signing (does the key match the certificate?)", e))?;
    cms.to_der().map_err(|e| create("encoding the signature", e))
}

/// Creates a signed verity bundle holding `rootfs` as the `rootfs` image. Needs `mksquashfs`.
pub fn create(options: &CreateOptions) -> Result<Manifest, BundleError> {
    Version::parse(&options.version).map_err(|e| BundleError::Create(e.to_string()))?;
    if options.compatible.is_empty() || options.compatible.chars().any(|c| c.is_control()) {
        return Err(BundleError::Create("the compatible string must be one non-empty line".into()));
    }
    if let Some(build) = &options.build
        && build.chars().any(|c| c.is_control())
    {
        return Err(BundleError::Create("the build string must be one line".into()));
    }
    let filename = options
        .rootfs
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| *n != MANIFEST_NAME)
        .ok_or_else(|| BundleError::Create(format!("{}: need a plain UTF-8 file name", options.rootfs.display())))?
        .to_string();
    let (sha256, size) = sha256_file(&options.rootfs)?;
    let mut manifest = Manifest {
        compatible: options.compatible.clone(),
        version: options.version.clone(),
        description: None,
        build: options.build.clone(),
        format: Some("verity".into()),
        verity: None,
        images: vec![Image { slot_class: "rootfs".into(), filename, sha256, size }],
    };
    // Sign before the slow part: a wrong key fails at once.
    sign(options, manifest.to_text().as_bytes())?;

    let out_dir = options.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(".bundle-")
        .tempdir_in(out_dir)
        .map_err(|e| BundleError::Create(format!("temporary directory in {}: {e}", out_dir.display())))?;
    // The manifest in the squashfs is the one without verity keys (as `rauc bundle` leaves it).
    let inner_manifest = work.path().join(MANIFEST_NAME);
    std::fs::write(&inner_manifest, manifest.to_text()).map_err(io_error(&inner_manifest))?;
    let payload_path = work.path().join("bundle.raucb");
    let output = Command::new("mksquashfs")
        .arg(&inner_manifest)
        .arg(&options.rootfs)
        .arg(&payload_path)
        .args(["-all-root", "-noappend", "-no-progress", "-no-xattrs", "-quiet"])
        .output()
        .map_err(|e| BundleError::Create(format!("cannot run mksquashfs (install squashfs-tools): {e}")))?;
    if !output.status.success() {
        return Err(BundleError::Create(format!(
            "mksquashfs failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }

    let mut payload = OpenOptions::new().read(true).write(true).open(&payload_path).map_err(io_error(&payload_path))?;
    let squashfs_len = payload.seek(SeekFrom::End(0)).map_err(io_error(&payload_path))?;
    if squashfs_len <= BLOCK {
        return Err(BundleError::Create(format!(
            "the squashfs is only {squashfs_len} bytes; a verity bundle needs more than 4096 (a larger image)"
        )));
    }
    let data_size = squashfs_len.div_ceil(BLOCK) * BLOCK;
    payload.set_len(data_size).map_err(io_error(&payload_path))?;
    let mut salt = [0u8; 32];
    openssl::rand::rand_bytes(&mut salt).map_err(|e| BundleError::Create(openssl_text(&e)))?;
    payload.seek(SeekFrom::Start(0)).map_err(io_error(&payload_path))?;
    let (tree, root) = verity::build(BufReader::with_capacity(1 << 16, &payload), data_size / BLOCK, &salt)
        .map_err(io_error(&payload_path))?;
    manifest.verity = Some(VerityParams { hash: hex::encode(root), salt: hex::encode(salt), size: tree.len() as u64 });
    let signature = sign(options, manifest.to_text().as_bytes())?;
    payload.seek(SeekFrom::End(0)).map_err(io_error(&payload_path))?;
    payload.write_all(&tree).map_err(io_error(&payload_path))?;
    payload.write_all(&signature).map_err(io_error(&payload_path))?;
    payload.write_all(&(signature.len() as u64).to_be_bytes()).map_err(io_error(&payload_path))?;
    payload.sync_all().map_err(io_error(&payload_path))?;
    drop(payload);
    std::fs::rename(&payload_path, &options.output).map_err(io_error(&options.output))?;
    Ok(manifest)
}

/// Why a correctly signed bundle is not for this box.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("wrong compatible: the bundle is for '{bundle}', this box is '{system}'")]
    Incompatible { bundle: String, system: String },
    #[error(
        "downgrade refused: the bundle has version {bundle}, this box runs {running} (set update.allow_downgrade or force)"
    )]
    Downgrade { bundle: String, running: String },
    #[error("version: {0}")]
    Version(#[from] VersionError),
    #[error("the bundle has no rootfs image")]
    NoRootfs,
}

impl PolicyError {
    pub fn reason(&self) -> &'static str {
        match self {
            PolicyError::Incompatible { .. } => "incompatible",
            PolicyError::Downgrade { .. } => "downgrade",
            PolicyError::Version(_) => "version",
            PolicyError::NoRootfs => "manifest",
        }
    }
}

/// May this (signed, verified) bundle be installed on a box that is `system` and runs `running`?
/// The same version again is allowed (a reinstall); an older one only with `allow_downgrade`.
pub fn check_policy(
    manifest: &Manifest,
    system: &str,
    running: &str,
    allow_downgrade: bool,
) -> Result<(), PolicyError> {
    if manifest.compatible != system {
        return Err(PolicyError::Incompatible { bundle: manifest.compatible.clone(), system: system.to_string() });
    }
    if manifest.image("rootfs").is_none() {
        return Err(PolicyError::NoRootfs);
    }
    let bundle = Version::parse(&manifest.version)?;
    let current = Version::parse(running)?;
    if bundle < current && !allow_downgrade {
        return Err(PolicyError::Downgrade { bundle: manifest.version.clone(), running: running.to_string() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_refuses_what_cannot_be_a_bundle() {
        assert!(matches!(Trailer::parse(10, [0; 8]), Err(BundleError::NotABundle(_))));
        let len = 3 * BLOCK + 8 + 1000;
        assert!(Trailer::parse(len, 0u64.to_be_bytes()).is_err());
        assert!(Trailer::parse(len, (MAX_SIGNATURE_BYTES + 1).to_be_bytes()).is_err());
        assert!(Trailer::parse(5000, 4993u64.to_be_bytes()).is_err(), "signature before the start");
        let trailer = Trailer::parse(len, 1000u64.to_be_bytes()).expect("fits");
        assert_eq!(trailer, Trailer { signature_offset: 3 * BLOCK, signature_len: 1000 });
        let (data, layout) = trailer.payload(BLOCK).expect("two data blocks and one hash block");
        assert_eq!((data, layout.data_blocks), (2 * BLOCK, 2));
        assert!(trailer.payload(2 * BLOCK).is_err(), "one data block has no tree");
        // Found by the bundle_trailer fuzz target: one data block and an empty tree.
        let one_block = Trailer::parse(BLOCK + 8 + 1000, 1000u64.to_be_bytes()).expect("fits");
        assert!(matches!(one_block.payload(0), Err(BundleError::NotABundle(_))));
        assert!(trailer.payload(4 * BLOCK).is_err(), "tree larger than the payload");
        assert!(trailer.payload(100).is_err(), "not a block multiple");
    }

    fn manifest(compatible: &str, version: &str) -> Manifest {
        Manifest {
            compatible: compatible.into(),
            version: version.into(),
            description: None,
            build: None,
            format: Some("verity".into()),
            verity: None,
            images: vec![Image { slot_class: "rootfs".into(), filename: "r".into(), sha256: "0".repeat(64), size: 1 }],
        }
    }

    #[test]
    fn policy_checks_compatible_and_version() {
        let ok = manifest("branchgate-x86_64", "1.2.0");
        check_policy(&ok, "branchgate-x86_64", "1.1.9", false).expect("upgrade");
        check_policy(&ok, "branchgate-x86_64", "1.2.0", false).expect("reinstall");
        let error = check_policy(&ok, "branchgate-arm64", "1.0", false).expect_err("other box");
        assert_eq!(error.reason(), "incompatible");
        assert!(error.to_string().contains("'branchgate-x86_64'"));
        let error = check_policy(&ok, "branchgate-x86_64", "1.10.0", false).expect_err("older");
        assert_eq!(error.reason(), "downgrade");
        check_policy(&ok, "branchgate-x86_64", "1.10.0", true).expect("allowed downgrade");
        let rc = manifest("branchgate-x86_64", "1.2.0-rc.1");
        assert_eq!(check_policy(&rc, "branchgate-x86_64", "1.2.0", false).expect_err("rc").reason(), "downgrade");
    }
}
