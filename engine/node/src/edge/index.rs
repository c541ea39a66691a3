//! The index beside the disk tier: one JSON description per object name, read back at
//! start so a restarted edge serves what its disk holds.

use super::*;

/// An object's description as the index keeps it (one JSON file per name).
#[derive(Serialize, serde::Deserialize)]
pub(super) struct IndexEntry {
    name: String,
    size: u64,
    block_size: u64,
    blake3: String,
    block_hashes: Vec<String>,
}

/// The index file of `name`: named by the name's BLAKE3, so any name is a safe file name.
pub(super) fn index_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{}.json", blake3::hash(name.as_bytes()).to_hex()))
}

/// Records `name`'s description (written whole, then renamed into place). A failure is
/// logged: the object is still served, only not known by name after a restart.
pub(super) fn save_index(dir: &Path, name: &str, meta: &Meta) {
    let entry = IndexEntry {
        name: name.to_owned(),
        size: meta.size,
        block_size: meta.block_size,
        blake3: hex(&meta.id.0),
        block_hashes: meta.block_hashes.iter().map(|h| hex(h)).collect(),
    };
    let path = index_path(dir, name);
    let tmp = path.with_extension("tmp");
    let written = serde_json::to_vec(&entry)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(object = name, path = %path.display(), "edge: cannot keep the object's description: {e}");
    }
}

/// The objects the index describes (a file that does not parse is skipped and removed).
pub(super) fn load_index(dir: &Path) -> HashMap<String, Arc<Object>> {
    let mut objects = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return objects;
    };
    for path in entries.flatten().map(|e| e.path()) {
        let entry = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<IndexEntry>(&b).ok())
            .and_then(|e| {
                let id = blockcast_proto::auth::from_hex::<32>(&e.blake3)?;
                let hashes = e
                    .block_hashes
                    .iter()
                    .map(|h| blockcast_proto::auth::from_hex::<32>(h))
                    .collect::<Option<Vec<_>>>()?;
                let blocks = e.size.div_ceil(e.block_size.max(1));
                let fits = e.block_size > 0
                    && hashes.len() as u64 == blocks
                    && index_path(dir, &e.name) == path;
                fits.then(|| {
                    let n = hashes.len();
                    let meta = Meta {
                        size: e.size,
                        block_size: e.block_size,
                        id: ContentId(id),
                        block_hashes: hashes.into(),
                    };
                    (e.name, meta, n)
                })
            });
        match entry {
            Some((name, meta, n)) => {
                let state = ObjState {
                    meta: Some(meta),
                    copied: vec![false; n],
                    ..ObjState::default()
                };
                objects.insert(
                    name.clone(),
                    Arc::new(Object {
                        name,
                        state: Mutex::new(state),
                        changed: Condvar::new(),
                        critical: Mutex::new(None),
                    }),
                );
            }
            None => {
                tracing::warn!(path = %path.display(), "edge: not an object description, removed");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    objects
}
