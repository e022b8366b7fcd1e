//! The dm-verity hash tree of a verity bundle, as `veritysetup format --no-superblock
//! --hash=sha256 --data-block-size=4096 --hash-block-size=4096 --salt=S` makes it (format 1).
//!
//! - The data (the squashfs, zero-padded to a 4 KiB multiple) is cut into 4 KiB blocks.
//! - Level 0 holds `sha256(salt || block)` of every data block, 128 hashes per 4 KiB hash
//!   block, the rest of the last block zero. Level n+1 hashes the blocks of level n the same
//!   way, until a level has one block.
//! - The tree is stored highest level first (the one-block level), level 0 last.
//! - The root hash is `sha256(salt || the top block)`. With a single data block there is no
//!   tree at all (root = hash of the block): RAUC refuses such bundles, hence "the squashfs
//!   must exceed 4096 bytes".

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

pub const BLOCK: u64 = 4096;
const HASH_LEN: usize = 32;
const HASHES_PER_BLOCK: u64 = BLOCK / HASH_LEN as u64;

#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("reading the bundle: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Mismatch(String),
    #[error("{0}")]
    Layout(String),
}

/// Where each level lives: `(first block within the tree, blocks)`, index 0 = level 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub data_blocks: u64,
    pub levels: Vec<(u64, u64)>,
}

impl Layout {
    pub fn new(data_blocks: u64) -> Layout {
        let mut counts = Vec::new();
        let mut n = data_blocks;
        while n > 1 {
            n = n.div_ceil(HASHES_PER_BLOCK);
            counts.push(n);
        }
        let mut levels = vec![(0, 0); counts.len()];
        let mut offset = 0;
        for (i, count) in counts.iter().enumerate().rev() {
            levels[i] = (offset, *count);
            offset += count;
        }
        Layout { data_blocks, levels }
    }

    /// Bytes of the whole tree.
    pub fn tree_bytes(&self) -> u64 {
        self.levels.iter().map(|(_, blocks)| blocks).sum::<u64>() * BLOCK
    }
}

fn salted_hash(salt: &[u8], block: &[u8]) -> [u8; HASH_LEN] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(block);
    hasher.finalize().into()
}

/// Hashes `blocks` blocks (pulled through `next`) into hash blocks (zero-padded).
fn hash_level(blocks: u64, salt: &[u8], mut next: impl FnMut(&mut [u8]) -> io::Result<()>) -> io::Result<Vec<u8>> {
    let out_blocks = blocks.div_ceil(HASHES_PER_BLOCK);
    let mut out = Vec::with_capacity((out_blocks * BLOCK) as usize);
    let mut block = vec![0u8; BLOCK as usize];
    for _ in 0..blocks {
        next(&mut block)?;
        out.extend_from_slice(&salted_hash(salt, &block));
    }
    out.resize((out_blocks * BLOCK) as usize, 0);
    Ok(out)
}

/// Builds the tree over `data` (exactly `data_blocks` × 4 KiB): returns `(tree, root hash)`.
/// For bundle creation on a build host: the levels are held in memory (level 0 is 1/128 of the data).
pub fn build(mut data: impl Read, data_blocks: u64, salt: &[u8]) -> io::Result<(Vec<u8>, [u8; HASH_LEN])> {
    let layout = Layout::new(data_blocks);
    if layout.levels.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "a verity tree needs more than one 4 KiB data block"));
    }
    let mut levels: Vec<Vec<u8>> = Vec::new();
    levels.push(hash_level(data_blocks, salt, |block| data.read_exact(block))?);
    while levels.last().map_or(0, |l| l.len() as u64 / BLOCK) > 1 {
        let below = levels.last().map(Vec::as_slice).unwrap_or_default();
        let mut chunks = below.chunks(BLOCK as usize);
        let next = hash_level(below.len() as u64 / BLOCK, salt, |block| {
            let chunk = chunks.next().ok_or_else(|| io::Error::other("hash level shorter than counted"))?;
            block.copy_from_slice(chunk);
            Ok(())
        })?;
        levels.push(next);
    }
    let top = levels.last().map(Vec::as_slice).unwrap_or_default();
    let root = salted_hash(salt, top);
    let mut tree = Vec::with_capacity(layout.tree_bytes() as usize);
    for level in levels.iter().rev() {
        tree.extend_from_slice(level);
    }
    debug_assert_eq!(tree.len() as u64, layout.tree_bytes());
    Ok((tree, root))
}

/// Checks the tree stored at `tree_offset` in `file` against the data at offset 0 and the
/// root hash, reading each block once, in constant memory (two 4 KiB buffers). `progress`
/// gets the fraction of blocks checked so far (0.0–1.0).
pub fn verify(
    file: &File,
    layout: &Layout,
    tree_offset: u64,
    salt: &[u8],
    root: &[u8; HASH_LEN],
    progress: &mut dyn FnMut(f32),
) -> Result<(), VerityError> {
    if layout.levels.is_empty() {
        return Err(VerityError::Layout("no hash tree: the payload is a single 4 KiB block".into()));
    }
    let total: u64 = layout.data_blocks + layout.levels.iter().map(|(_, n)| n).sum::<u64>();
    let mut done = 0u64;
    let mut child = vec![0u8; BLOCK as usize];
    let mut parent = vec![0u8; BLOCK as usize];
    for (level, &(parent_first, parent_blocks)) in layout.levels.iter().enumerate() {
        let (child_offset, child_blocks) = match level {
            0 => (0, layout.data_blocks),
            _ => {
                let (first, blocks) = layout.levels[level - 1];
                (tree_offset + first * BLOCK, blocks)
            }
        };
        let parent_offset = tree_offset + parent_first * BLOCK;
        for index in 0..child_blocks {
            let slot = (index % HASHES_PER_BLOCK) as usize * HASH_LEN;
            if slot == 0 {
                file.read_exact_at(&mut parent, parent_offset + (index / HASHES_PER_BLOCK) * BLOCK)?;
            }
            file.read_exact_at(&mut child, child_offset + index * BLOCK)?;
            if salted_hash(salt, &child)[..] != parent[slot..slot + HASH_LEN] {
                let what = if level == 0 {
                    format!("data block {index} (bytes {}..{})", index * BLOCK, (index + 1) * BLOCK)
                } else {
                    format!("hash block {index} of level {}", level - 1)
                };
                return Err(VerityError::Mismatch(format!("{what} does not match its hash")));
            }
            let last_in_parent = index + 1 == child_blocks || slot + HASH_LEN == BLOCK as usize;
            if last_in_parent && parent[slot + HASH_LEN..].iter().any(|&b| b != 0) {
                return Err(VerityError::Mismatch(format!("hash level {level} has data after its last hash")));
            }
            done += 1;
            if done.is_multiple_of(256) {
                progress(done as f32 / total as f32);
            }
        }
        if child_blocks.div_ceil(HASHES_PER_BLOCK) != parent_blocks {
            return Err(VerityError::Layout(format!("hash level {level} has the wrong number of blocks")));
        }
    }
    let (top_first, _) = layout.levels[layout.levels.len() - 1];
    file.read_exact_at(&mut parent, tree_offset + top_first * BLOCK)?;
    if salted_hash(salt, &parent) != *root {
        return Err(VerityError::Mismatch("the hash tree does not match the signed root hash".into()));
    }
    progress(1.0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_cryptsetup_levels() {
        assert!(Layout::new(1).levels.is_empty());
        assert_eq!(Layout::new(2).levels, vec![(0, 1)]);
        assert_eq!(Layout::new(128).levels, vec![(0, 1)]);
        // 129 blocks: level 0 has 2 blocks, level 1 one; the top level is stored first.
        assert_eq!(Layout::new(129).levels, vec![(1, 2), (0, 1)]);
        let big = Layout::new(128 * 128 + 1);
        assert_eq!(big.levels, vec![(3, 129), (1, 2), (0, 1)]);
        assert_eq!(big.tree_bytes(), 132 * BLOCK);
    }

    /// An independent, naive computation of the same tree for a small input.
    #[test]
    fn root_hash_of_two_blocks_by_hand() {
        let salt = [7u8; 32];
        let data: Vec<u8> = (0..2 * BLOCK as usize).map(|i| (i % 251) as u8).collect();
        let (tree, root) = build(&data[..], 2, &salt).expect("build");
        let mut expected_block = Vec::new();
        for chunk in data.chunks(4096) {
            let mut h = Sha256::new();
            h.update(salt);
            h.update(chunk);
            expected_block.extend_from_slice(&h.finalize());
        }
        expected_block.resize(4096, 0);
        assert_eq!(tree, expected_block);
        let mut h = Sha256::new();
        h.update(salt);
        h.update(&expected_block);
        assert_eq!(root[..], h.finalize()[..]);
    }

    #[test]
    fn verify_accepts_the_built_tree_and_finds_a_flipped_byte() {
        let salt = [1u8; 32];
        let blocks = 300u64;
        let mut data: Vec<u8> = (0..(blocks * BLOCK) as usize).map(|i| (i * 31 % 253) as u8).collect();
        let (tree, root) = build(&data[..], blocks, &salt).expect("build");
        let layout = Layout::new(blocks);
        assert_eq!(tree.len() as u64, layout.tree_bytes());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("payload");
        let write = |data: &[u8]| {
            let mut all = data.to_vec();
            all.extend_from_slice(&tree);
            std::fs::write(&path, all).expect("write");
            File::open(&path).expect("open")
        };
        let mut seen = 0.0;
        verify(&write(&data), &layout, blocks * BLOCK, &salt, &root, &mut |p| seen = p).expect("valid");
        assert_eq!(seen, 1.0);
        data[200 * BLOCK as usize + 5] ^= 1;
        let error = verify(&write(&data), &layout, blocks * BLOCK, &salt, &root, &mut |_| {}).expect_err("tampered");
        assert!(error.to_string().contains("data block 200"), "{error}");
        let other_root = [0u8; 32];
        data[200 * BLOCK as usize + 5] ^= 1;
        let error = verify(&write(&data), &layout, blocks * BLOCK, &salt, &other_root, &mut |_| {}).expect_err("root");
        assert!(error.to_string().contains("root hash"), "{error}");
    }
}
