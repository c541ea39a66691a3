//! Key files (docs/SECURITY.md "Keys"): `blockcast keygen NAME` makes NAME.key, the Ed25519
//! secret (mode 0600, never overwritten), and NAME.pub, the public key to hand to receivers.
//!
//! Both are one line of text:
//!
//! ```text
//! NAME.key   blockcast-ed25519-secret <64 hex digits: the 32-byte seed>
//! NAME.pub   blockcast-ed25519 <64 hex digits: the 32-byte public key> <comment>
//! ```
//!
//! A `.pub` line may also be given where a file is expected by its hex key alone.
//!
//! `blockcast keygen --secret FILE` makes a closed group's secret (docs/wire.md §16), one line
//! too, mode 0600, never overwritten: `blockcast-group-secret <64 hex digits: 32 bytes>`. A
//! file of exactly 32 raw bytes (`head -c 32 /dev/urandom`) is taken as well.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use blockcast_proto::auth::{from_hex, hex, Signer};

use crate::NodeError;

const SECRET_TAG: &str = "blockcast-ed25519-secret";
const PUBLIC_TAG: &str = "blockcast-ed25519";
const GROUP_TAG: &str = "blockcast-group-secret";

/// `n` random bytes from the OS.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], NodeError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)
        .map_err(|e| NodeError::Internal(format!("no randomness from the OS: {e}")))?;
    Ok(b)
}

/// The key pair made by `keygen`: where it went and the public key.
#[derive(Clone, Debug)]
pub struct KeyPair {
    pub secret: PathBuf,
    pub public: PathBuf,
    pub key: [u8; 32],
}

/// Makes a new key pair `NAME.key` / `NAME.pub` (`name` is the path without the suffix).
/// Neither file may exist already: a key is never overwritten.
pub fn generate(name: &Path) -> Result<KeyPair, NodeError> {
    let secret = with_suffix(name, "key");
    let public = with_suffix(name, "pub");
    if public.exists() {
        return Err(NodeError::Output {
            path: public,
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "already exists"),
        });
    }
    let seed: [u8; 32] = random_bytes()?;
    let signer = Signer::from_seed(&seed);
    let key = signer.public_key();
    let out = |path: &Path, source| NodeError::Output {
        path: path.to_path_buf(),
        source,
    };
    write_private(&secret, &format!("{SECRET_TAG} {}\n", hex(&seed)))?;
    let comment = name
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut p = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&public)
        .map_err(|e| out(&public, e))?;
    p.write_all(format!("{PUBLIC_TAG} {} {comment}\n", hex(&key)).as_bytes())
        .map_err(|e| out(&public, e))?;
    Ok(KeyPair {
        secret,
        public,
        key,
    })
}

/// Writes a new group secret (32 bytes from the OS) to `path`, mode 0600; `path` must not
/// exist.
pub fn generate_group_secret(path: &Path) -> Result<(), NodeError> {
    let secret: [u8; 32] = random_bytes()?;
    write_private(path, &format!("{GROUP_TAG} {}\n", hex(&secret)))
}

/// Writes `text` to a new file at `path`, mode 0600, synced. Created only if new (O_EXCL):
/// nobody else can have opened it in between.
fn write_private(path: &Path, text: &str) -> Result<(), NodeError> {
    let out = |source| NodeError::Output {
        path: path.to_path_buf(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(out)?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(out)
}

/// Reads a group secret (`--secret`): the line `keygen --secret` writes, or 32 raw bytes.
/// Refuses a file that others can read.
pub fn read_group_secret(path: &Path) -> Result<blockcast_seal::Secret, NodeError> {
    let bytes = read_private(path)?;
    if let Ok(raw) = <[u8; 32]>::try_from(&bytes[..]) {
        return Ok(blockcast_seal::Secret::new(raw));
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut words = text.split_whitespace();
    match (words.next(), words.next().and_then(from_hex::<32>)) {
        (Some(GROUP_TAG), Some(s)) => Ok(blockcast_seal::Secret::new(s)),
        _ => Err(bad(
            path,
            format!("not a group secret (a line \"{GROUP_TAG} <64 hex digits>\", or 32 raw bytes)"),
        )),
    }
}

/// The bytes of a file only its owner may read.
fn read_private(path: &Path) -> Result<Vec<u8>, NodeError> {
    let input = |source| NodeError::Input {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(input)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(bad(
            path,
            format!(
                "mode {:o}: a secret or secret key must be readable by its owner only (chmod 600)",
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    std::fs::read(path).map_err(input)
}

fn with_suffix(name: &Path, suffix: &str) -> PathBuf {
    let mut s = name.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

fn bad(path: &Path, why: String) -> NodeError {
    NodeError::Input {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
    }
}

/// Reads a secret key file (`--sign`). Refuses one that others can read, as ssh does.
pub fn read_secret(path: &Path) -> Result<Signer, NodeError> {
    let text = String::from_utf8_lossy(&read_private(path)?).into_owned();
    let mut words = text.split_whitespace();
    match (words.next(), words.next().and_then(from_hex::<32>)) {
        (Some(SECRET_TAG), Some(seed)) => Ok(Signer::from_seed(&seed)),
        _ => Err(bad(
            path,
            format!("not a blockcast secret key (a line \"{SECRET_TAG} <64 hex digits>\")"),
        )),
    }
}

/// Reads a public key (`--trust`): a `.pub` file, or the 64 hex digits themselves.
pub fn read_public(arg: &str) -> Result<[u8; 32], NodeError> {
    if let Some(k) = from_hex::<32>(arg) {
        return Ok(k);
    }
    let path = Path::new(arg);
    let text = std::fs::read_to_string(path).map_err(|source| NodeError::Input {
        path: path.to_path_buf(),
        source,
    })?;
    let mut words = text.split_whitespace();
    match (words.next(), words.next().and_then(from_hex::<32>)) {
        (Some(PUBLIC_TAG), Some(k)) => Ok(k),
        _ => Err(bad(
            path,
            format!("not a blockcast public key (a line \"{PUBLIC_TAG} <64 hex digits> ...\")"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_private_secret_and_a_public_key_that_read_back() {
        let dir = std::env::temp_dir().join(format!("bc-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pair = generate(&dir.join("origin")).unwrap();
        let mode = std::fs::metadata(&pair.secret)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let signer = read_secret(&pair.secret).unwrap();
        assert_eq!(signer.public_key(), pair.key);
        assert_eq!(
            read_public(pair.public.to_str().unwrap()).unwrap(),
            pair.key
        );
        assert_eq!(read_public(&hex(&pair.key)).unwrap(), pair.key);
        // Never overwritten.
        assert!(generate(&dir.join("origin")).is_err());
        // A secret others can read is refused.
        std::fs::set_permissions(&pair.secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_secret(&pair.secret).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_group_secret_is_private_never_overwritten_and_reads_back_in_either_form() {
        let dir = std::env::temp_dir().join(format!("bc-group-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("group.secret");
        generate_group_secret(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let a = read_group_secret(&path).unwrap();
        assert!(generate_group_secret(&path).is_err());
        let other = dir.join("other.secret");
        generate_group_secret(&other).unwrap();
        assert_ne!(read_group_secret(&other).unwrap(), a);
        // 32 raw bytes.
        let raw = dir.join("raw");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_group_secret(&raw).unwrap(),
            blockcast_seal::Secret::new([7; 32])
        );
        // Readable by others, or not a secret: refused.
        std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_group_secret(&raw).is_err());
        std::fs::write(&other, b"hello").unwrap();
        assert!(read_group_secret(&other).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
