//! The bundle manifest (`manifest.raucm`): RAUC's key file format, the subset this box uses.
//!
//! ```text
//! [update]
//! compatible=branchgate-x86_64
//! version=1.2.3
//! build=20250101
//!
//! [bundle]
//! format=verity
//! verity-hash=<64 hex>
//! verity-salt=<64 hex>
//! verity-size=<bytes of the hash tree>
//!
//! [image.rootfs]
//! sha256=<64 hex>
//! size=<bytes>
//! filename=rootfs.img
//! ```
//!
//! Syntax as GLib's key files: `[group]` lines, `key=value` lines (blanks around `=` are not
//! part of key or value), `#` comments, blank lines. Stricter than GLib: a repeated group or
//! key is an error (GLib would silently merge). Groups this box does not use (`[hooks]`,
//! `[handler]`, `[meta.*]`, ...) are skipped; this box never runs bundle hooks.

use serde::Serialize;

use crate::version::Version;

/// Largest manifest accepted (RAUC's own are a few hundred bytes).
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("manifest: [{group}] {key} is missing")]
    Missing { group: String, key: String },
    #[error("manifest: [{group}] {key}: {message}")]
    Value { group: String, key: String, message: String },
    #[error("manifest: {0}")]
    Other(String),
}

/// The dm-verity parameters of a verity bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerityParams {
    /// Root hash, 64 lowercase hex digits.
    pub hash: String,
    /// Salt, lowercase hex (RAUC uses 32 bytes).
    pub salt: String,
    /// Bytes of the hash tree that follows the padded squashfs.
    pub size: u64,
}

/// One image of the bundle, for the slot class in its group name (`[image.rootfs]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    pub slot_class: String,
    pub filename: String,
    /// SHA-256 of the image file, 64 lowercase hex digits.
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    pub compatible: String,
    pub version: String,
    pub description: Option<String>,
    pub build: Option<String>,
    /// `[bundle] format`: `verity` for the bundles this box makes and installs.
    pub format: Option<String>,
    pub verity: Option<VerityParams>,
    pub images: Vec<Image>,
}

fn is_hex(text: &str, len: Option<usize>) -> bool {
    !text.is_empty()
        && len.is_none_or(|len| text.len() == len)
        && text.len().is_multiple_of(2)
        && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A group's keys in file order.
struct Group {
    name: String,
    keys: Vec<(String, String)>,
    used: Vec<bool>,
}

impl Group {
    fn take(&mut self, key: &str) -> Option<String> {
        let index = self.keys.iter().position(|(k, _)| k == key)?;
        self.used[index] = true;
        Some(self.keys[index].1.clone())
    }

    fn require(&mut self, key: &str) -> Result<String, ManifestError> {
        self.take(key).ok_or_else(|| ManifestError::Missing { group: self.name.clone(), key: key.into() })
    }

    fn value_error(&self, key: &str, message: impl Into<String>) -> ManifestError {
        ManifestError::Value { group: self.name.clone(), key: key.into(), message: message.into() }
    }

    fn hex(&mut self, key: &str, len: Option<usize>) -> Result<Option<String>, ManifestError> {
        match self.take(key) {
            None => Ok(None),
            Some(value) if is_hex(&value, len) => Ok(Some(value)),
            Some(_) => Err(self.value_error(
                key,
                match len {
                    Some(len) => format!("expected {len} lowercase hex digits"),
                    None => "expected lowercase hex digits".to_string(),
                },
            )),
        }
    }

    fn number(&mut self, key: &str) -> Result<Option<u64>, ManifestError> {
        match self.take(key) {
            None => Ok(None),
            Some(value) => value
                .parse::<u64>()
                .map(Some)
                .map_err(|_| self.value_error(key, format!("expected a number of bytes, got '{value}'"))),
        }
    }

    fn unused(&self) -> Option<&str> {
        self.keys.iter().zip(&self.used).find(|(_, used)| !**used).map(|((k, _), _)| k.as_str())
    }
}

fn parse_groups(text: &str) -> Result<Vec<Group>, ManifestError> {
    let mut groups: Vec<Group> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let syntax = |message: &str| ManifestError::Syntax { line: line_no, message: message.to_string() };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.strip_suffix(']').ok_or_else(|| syntax("a group line must end with ']'"))?;
            if name.is_empty() || name.chars().any(|c| c.is_control() || c == '[' || c == ']') {
                return Err(syntax("invalid group name"));
            }
            if groups.iter().any(|g| g.name == name) {
                return Err(syntax(&format!("group [{name}] appears twice")));
            }
            groups.push(Group { name: name.to_string(), keys: Vec::new(), used: Vec::new() });
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| syntax("expected key=value or [group]"))?;
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err(syntax("invalid key name"));
        }
        let group = groups.last_mut().ok_or_else(|| syntax("key before the first [group]"))?;
        if group.keys.iter().any(|(k, _)| k == key) {
            return Err(syntax(&format!("key {key} appears twice in [{}]", group.name)));
        }
        group.keys.push((key.to_string(), value.to_string()));
        group.used.push(false);
    }
    Ok(groups)
}

impl Manifest {
    /// Parses a manifest; any bytes are safe to give (the result is an error, never a panic).
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::Other(format!("larger than {MAX_MANIFEST_BYTES} bytes")));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| ManifestError::Other("not UTF-8 text".into()))?;
        let mut groups = parse_groups(text)?;
        let update_index = groups
            .iter()
            .position(|g| g.name == "update")
            .ok_or_else(|| ManifestError::Other("no [update] group".into()))?;
        let bundle_index = groups.iter().position(|g| g.name == "bundle");

        let update = &mut groups[update_index];
        let compatible = update.require("compatible")?;
        if compatible.is_empty() {
            return Err(update.value_error("compatible", "must not be empty"));
        }
        let version = update.require("version")?;
        if let Err(e) = Version::parse(&version) {
            return Err(update.value_error("version", e.to_string()));
        }
        let description = update.take("description");
        let build = update.take("build");
        if let Some(key) = update.unused() {
            return Err(update.value_error(key, "unknown key"));
        }

        let (format, verity) = match bundle_index {
            None => (None, None),
            Some(index) => {
                let bundle = &mut groups[index];
                let format = bundle.take("format");
                let hash = bundle.hex("verity-hash", Some(64))?;
                let salt = bundle.hex("verity-salt", None)?;
                let size = bundle.number("verity-size")?;
                // RAUC 1.8 also knows [bundle] encryption keys (crypt format); this box does not.
                if let Some(key) = bundle.unused() {
                    return Err(bundle.value_error(key, "unknown key"));
                }
                let verity = match (hash, salt, size) {
                    (Some(hash), Some(salt), Some(size)) => Some(VerityParams { hash, salt, size }),
                    (None, None, None) => None,
                    _ => {
                        return Err(ManifestError::Other(
                            "[bundle] needs all of verity-hash, verity-salt and verity-size, or none".into(),
                        ));
                    }
                };
                (format, verity)
            }
        };

        let mut images = Vec::new();
        for group in groups.iter_mut() {
            let Some(slot_class) = group.name.strip_prefix("image.") else { continue };
            if slot_class.is_empty() || slot_class.contains('/') {
                return Err(ManifestError::Other(format!("invalid image group [{}]", group.name)));
            }
            let slot_class = slot_class.to_string();
            let filename = group.require("filename")?;
            if filename.is_empty() || filename.contains('/') || filename == "." || filename == ".." {
                return Err(group.value_error("filename", "must be a plain file name"));
            }
            let sha256 = group
                .hex("sha256", Some(64))?
                .ok_or_else(|| ManifestError::Missing { group: group.name.clone(), key: "sha256".into() })?;
            let size = group
                .number("size")?
                .ok_or_else(|| ManifestError::Missing { group: group.name.clone(), key: "size".into() })?;
            // RAUC's per-image `hooks`, `adaptive` and `type` keys are not used here; they are
            // tolerated so that a RAUC-made manifest still parses.
            for optional in ["hooks", "adaptive", "type", "args"] {
                group.take(optional);
            }
            if let Some(key) = group.unused() {
                return Err(group.value_error(key, "unknown key"));
            }
            images.push(Image { slot_class, filename, sha256, size });
        }
        if images.is_empty() {
            return Err(ManifestError::Other("no [image.<slot class>] group".into()));
        }
        Ok(Manifest { compatible, version, description, build, format, verity, images })
    }

    /// The manifest as RAUC writes it (group and key order as `rauc bundle`).
    pub fn to_text(&self) -> String {
        let mut out = String::from("[update]\n");
        out.push_str(&format!("compatible={}\n", self.compatible));
        out.push_str(&format!("version={}\n", self.version));
        if let Some(description) = &self.description {
            out.push_str(&format!("description={description}\n"));
        }
        if let Some(build) = &self.build {
            out.push_str(&format!("build={build}\n"));
        }
        if self.format.is_some() || self.verity.is_some() {
            out.push_str("\n[bundle]\n");
            if let Some(format) = &self.format {
                out.push_str(&format!("format={format}\n"));
            }
            if let Some(verity) = &self.verity {
                out.push_str(&format!(
                    "verity-hash={}\nverity-salt={}\nverity-size={}\n",
                    verity.hash, verity.salt, verity.size
                ));
            }
        }
        for image in &self.images {
            out.push_str(&format!(
                "\n[image.{}]\nsha256={}\nsize={}\nfilename={}\n",
                image.slot_class, image.sha256, image.size, image.filename
            ));
        }
        out
    }

    /// The image for a slot class (`rootfs`).
    pub fn image(&self, slot_class: &str) -> Option<&Image> {
        self.images.iter().find(|i| i.slot_class == slot_class)
    }

    /// A few lines for people: what the bundle is and what it holds.
    pub fn summary(&self) -> String {
        let mut out = format!("compatible: {}\nversion:    {}\n", self.compatible, self.version);
        if let Some(build) = &self.build {
            out.push_str(&format!("build:      {build}\n"));
        }
        out.push_str(&format!("format:     {}\n", self.format.as_deref().unwrap_or("plain")));
        if let Some(verity) = &self.verity {
            out.push_str(&format!("verity:     root hash {} (tree {} bytes)\n", verity.hash, verity.size));
        }
        for image in &self.images {
            out.push_str(&format!(
                "image:      [{}] {} ({} bytes, sha256 {})\n",
                image.slot_class, image.filename, image.size, image.sha256
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAUC_MADE: &str = "[update]\ncompatible=branchgate-x86_64\nversion=1.2.3\n\n[bundle]\nformat=verity\n\
verity-hash=03df100817b8b4fee276284e10ee39c462a37dddc0072b5533443b87ac995345\n\
verity-salt=09f1c9a27622c350700bada32b625d07e09bb143ab969ca920b88df02ac40499\nverity-size=4096\n\n\
[image.rootfs]\nsha256=ed691eb1edb8193d4b73b82f789420df735f9a24942451af4f799de60d58fc97\nsize=20000\nfilename=rootfs.img\n";

    #[test]
    fn parses_what_rauc_writes_and_writes_it_back() {
        let manifest = Manifest::parse(RAUC_MADE.as_bytes()).expect("parses");
        assert_eq!(manifest.compatible, "branchgate-x86_64");
        assert_eq!(manifest.version, "1.2.3");
        assert_eq!(manifest.format.as_deref(), Some("verity"));
        let verity = manifest.verity.as_ref().expect("verity");
        assert_eq!(verity.size, 4096);
        assert_eq!(verity.salt.len(), 64);
        let image = manifest.image("rootfs").expect("rootfs image");
        assert_eq!((image.filename.as_str(), image.size), ("rootfs.img", 20000));
        assert_eq!(manifest.to_text(), RAUC_MADE);
        assert_eq!(Manifest::parse(manifest.to_text().as_bytes()).expect("again"), manifest);
        assert!(manifest.summary().contains("version:    1.2.3"));
    }

    #[test]
    fn tolerates_comments_blanks_and_other_groups() {
        let text = "# made by hand\n[update]\n compatible = box \nversion= 2\nbuild=x\n\n[hooks]\nfilename=hook.sh\n\
[image.rootfs]\nfilename=r.img\nsha256=ed691eb1edb8193d4b73b82f789420df735f9a24942451af4f799de60d58fc97\nsize=1\nhooks=install\n";
        let manifest = Manifest::parse(text.as_bytes()).expect("parses");
        assert_eq!(manifest.compatible, "box");
        assert_eq!(manifest.build.as_deref(), Some("x"));
        assert_eq!(manifest.format, None);
        assert_eq!(manifest.verity, None);
    }

    #[test]
    fn refuses_broken_manifests_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "no [update]"),
            ("compatible=x\n", "before the first"),
            ("[update\ncompatible=x\n", "must end with"),
            ("[update]\nversion=1\n", "compatible is missing"),
            ("[update]\ncompatible=x\n", "version is missing"),
            ("[update]\ncompatible=x\nversion=one\n", "invalid version"),
            ("[update]\ncompatible=x\ncompatible=y\n", "appears twice"),
            ("[update]\ncompatible=x\nversion=1\n[update]\n", "appears twice"),
            ("[update]\ncompatible=x\nversion=1\nfoo=1\n", "unknown key"),
            ("[update]\ncompatible=x\nversion=1\njust text\n", "expected key=value"),
            ("[update]\ncompatible=x\nversion=1\n", "no [image"),
            ("[update]\ncompatible=x\nversion=1\n[image.rootfs]\nfilename=../x\n", "plain file name"),
            ("[update]\ncompatible=x\nversion=1\n[image.rootfs]\nfilename=x\nsha256=XYZ\nsize=1\n", "hex"),
            ("[update]\ncompatible=x\nversion=1\n[image.rootfs]\nfilename=x\n", "sha256 is missing"),
            (
                "[update]\ncompatible=x\nversion=1\n[bundle]\nverity-hash=00\n[image.rootfs]\nfilename=x\n",
                "64 lowercase hex",
            ),
            ("[update]\ncompatible=x\nversion=1\n[bundle]\nverity-size=-1\n", "number of bytes"),
        ];
        for (text, expected) in cases {
            let error = Manifest::parse(text.as_bytes()).expect_err(text).to_string();
            assert!(error.contains(expected), "{text:?}: {error} (expected '{expected}')");
        }
        assert!(Manifest::parse(&[0xff, 0xfe]).is_err());
        assert!(Manifest::parse(&vec![b'#'; MAX_MANIFEST_BYTES + 1]).is_err());
    }
}
