//! Files opened beneath one directory, never through a symbolic link: what a receiver writes
//! under its `--out` (objects named by the manifest, a peer's words; the state directory)
//! cannot land outside it, whatever links someone planted there.
//!
//! Each path is resolved from a descriptor of the root with `openat2` and
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` (Linux 5.6 and later). Where
//! the kernel lacks `openat2` (`ENOSYS`, or `EPERM` from a seccomp filter that does not know
//! it), the same rule is kept by hand: one `openat` per component, each with `O_NOFOLLOW`, `..`
//! refused. Directories are made one component at a time with `mkdirat` under the descriptor of
//! the one before. The root's own path is the user's and is followed as given.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Cleared the first time the kernel says it has no `openat2`; later opens walk by hand.
static OPENAT2: AtomicBool = AtomicBool::new(true);

/// How to open a file beneath the root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read only; it must exist.
    Read,
    /// Read and write; it must exist.
    ReadWrite,
    /// Read and write, made if missing, never truncated.
    Create,
    /// Write, made if missing, truncated if not.
    Truncate,
}

impl Access {
    fn flags(self) -> OFlags {
        match self {
            Access::Read => OFlags::RDONLY,
            Access::ReadWrite => OFlags::RDWR,
            Access::Create => OFlags::RDWR | OFlags::CREATE,
            Access::Truncate => OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
        }
    }
}

/// What [`Beneath::entry`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// A regular file (not a link, a directory or anything else).
    pub file: bool,
    /// How many names it has (a hard link elsewhere makes it more than one).
    pub links: u64,
}

/// A directory that paths are resolved beneath.
#[derive(Debug)]
pub struct Beneath {
    root: OwnedFd,
    path: PathBuf,
}

impl Beneath {
    /// Opens the directory `root` (its own path is followed as given).
    pub fn open(root: &Path) -> io::Result<Beneath> {
        let dir = if root.as_os_str().is_empty() {
            Path::new(".")
        } else {
            root
        };
        let fd = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Beneath {
            root: fd,
            path: root.to_path_buf(),
        })
    }

    /// Makes the directory `root` (and its parents, as `mkdir -p` would) if it is missing, then
    /// opens it.
    pub fn create(root: &Path) -> io::Result<Beneath> {
        if !root.as_os_str().is_empty() {
            std::fs::create_dir_all(root)?;
        }
        Beneath::open(root)
    }

    /// The root's path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `path` (under the root, given relative to it or with the root's path in front).
    /// A symbolic link anywhere below the root, or a path leading out of it, is an error.
    pub fn open_file(&self, path: &Path, access: Access) -> io::Result<File> {
        let rel = self.relative(path)?;
        let fd = self
            .resolve(rel, access.flags() | OFlags::CLOEXEC)
            .map_err(|e| self.refused(path, e))?;
        Ok(File::from(fd))
    }

    /// Makes the directory `path` and its missing parents below the root, one component at a
    /// time, following no symbolic link.
    pub fn create_dirs(&self, path: &Path) -> io::Result<()> {
        let rel = self.relative(path)?;
        let mut dir: Option<OwnedFd> = None;
        for c in components(rel)? {
            let parent = dir.as_ref().unwrap_or(&self.root);
            match rustix::fs::mkdirat(parent, c, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(self.refused(path, e)),
            }
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let next = rustix::fs::openat(parent, c, flags, Mode::empty())
                .map_err(|e| self.refused(path, link_said(parent, c, e)))?;
            dir = Some(next);
        }
        Ok(())
    }

    /// What is at `path`, if anything: its last component is looked at, not followed.
    pub fn entry(&self, path: &Path) -> io::Result<Option<Entry>> {
        let rel = self.relative(path)?;
        let (parent, name) = match self.parent_of(rel) {
            Ok(p) => p,
            // Its directory is not there: nor is it.
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(self.refused(path, e)),
        };
        match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Entry {
                file: rustix::fs::FileType::from_raw_mode(st.st_mode)
                    == rustix::fs::FileType::RegularFile,
                links: st.st_nlink,
            })),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.refused(path, e)),
        }
    }

    /// Renames `from` to `to`, both in the same directory below the root.
    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (rf, rt) = (self.relative(from)?, self.relative(to)?);
        if rf.parent() != rt.parent() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "rename across directories",
            ));
        }
        let (dir, a) = self.parent_of(rf).map_err(|e| self.refused(from, e))?;
        let b = rt.file_name().unwrap_or_default();
        rustix::fs::renameat(&dir, a, &dir, b).map_err(|e| self.refused(to, e))
    }

    /// Removes the file `path` (a link is removed, not followed).
    pub fn remove_file(&self, path: &Path) -> io::Result<()> {
        let rel = self.relative(path)?;
        let (dir, name) = self.parent_of(rel).map_err(|e| self.refused(path, e))?;
        rustix::fs::unlinkat(&dir, name, AtFlags::empty()).map_err(|e| self.refused(path, e))
    }

    /// Makes the entries of the directory `path` durable (`fsync` on it).
    pub fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let rel = self.relative(path)?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = self
            .resolve(rel, flags)
            .map_err(|e| self.refused(path, e))?;
        Ok(rustix::fs::fsync(&fd)?)
    }

    /// The names in the directory `path` (without `.` and `..`).
    pub fn list(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let rel = self.relative(path)?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = self
            .resolve(rel, flags)
            .map_err(|e| self.refused(path, e))?;
        let mut names = Vec::new();
        for e in rustix::fs::Dir::read_from(&fd)? {
            let name = e?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(std::ffi::OsStr::from_bytes(&name).to_os_string());
            }
        }
        Ok(names)
    }

    /// `path` relative to the root: with the root's path in front (stripped), or relative.
    fn relative<'a>(&self, path: &'a Path) -> io::Result<&'a Path> {
        let root = &self.path;
        if let Ok(rel) = path.strip_prefix(root) {
            return Ok(rel);
        }
        if path.is_relative() {
            return Ok(path);
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not under {}", path.display(), root.display()),
        ))
    }

    /// Opens `rel` beneath the root with `flags`, following no link.
    fn resolve(&self, rel: &Path, flags: OFlags) -> Result<OwnedFd, Errno> {
        // openat2 refuses a mode without O_CREAT.
        let mode = if flags.contains(OFlags::CREATE) {
            Mode::from_raw_mode(0o644)
        } else {
            Mode::empty()
        };
        if rel.as_os_str().is_empty() {
            return rustix::fs::openat(&self.root, ".", flags, mode);
        }
        // Relaxed: a hint shared by every thread; a stale `true` costs one ENOSYS more.
        if OPENAT2.load(Ordering::Relaxed) {
            let how =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&self.root, rel, flags, mode, how) {
                Err(Errno::NOSYS) | Err(Errno::PERM) => OPENAT2.store(false, Ordering::Relaxed),
                r => return r,
            }
        }
        walk(&self.root, rel, flags | OFlags::NOFOLLOW, mode)
    }

    /// The directory holding `rel` (opened beneath the root) and `rel`'s last component.
    fn parent_of<'a>(&self, rel: &'a Path) -> Result<(OwnedFd, &'a std::ffi::OsStr), Errno> {
        let name = rel.file_name().ok_or(Errno::INVAL)?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let fd = self.resolve(parent, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC)?;
        Ok((fd, name))
    }

    /// The error for `path` that `e` was: a link or an escape is said in words.
    fn refused(&self, path: &Path, e: Errno) -> io::Error {
        match e {
            Errno::LOOP | Errno::XDEV => io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} passes through a symbolic link or out of {}: not followed (files are written only beneath it)",
                    path.display(),
                    self.path.display()
                ),
            ),
            e => e.into(),
        }
    }
}

/// `rel`'s components, each a plain name (`..`, `.` prefixes and a root refused).
fn components(rel: &Path) -> Result<Vec<&std::ffi::OsStr>, io::Error> {
    rel.components()
        .filter(|c| *c != Component::CurDir)
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a plain relative path", rel.display()),
            )),
        })
        .collect()
}

/// The hand walk for kernels without `openat2`: each directory on the way opened with
/// `O_NOFOLLOW | O_DIRECTORY` under the one before, the last component with `flags` (which
/// carry `O_NOFOLLOW`).
fn walk(root: &OwnedFd, rel: &Path, flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
    let parts = components(rel).map_err(|_| Errno::XDEV)?;
    let Some((last, dirs)) = parts.split_last() else {
        return rustix::fs::openat(root, ".", flags & !OFlags::NOFOLLOW, mode);
    };
    let mut dir: Option<OwnedFd> = None;
    for d in dirs {
        let at = dir.as_ref().unwrap_or(root);
        let f = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        dir = Some(rustix::fs::openat(at, *d, f, Mode::empty()).map_err(|e| link_said(at, d, e))?);
    }
    let at = dir.as_ref().unwrap_or(root);
    rustix::fs::openat(at, *last, flags, mode).map_err(|e| link_said(at, last, e))
}

/// `ELOOP` where `O_NOFOLLOW | O_DIRECTORY` met a link (the kernel says `ENOTDIR`), as openat2
/// says it: the caller tells a link apart from a file in the way.
fn link_said(at: &OwnedFd, name: &std::ffi::OsStr, e: Errno) -> Errno {
    let link = || {
        rustix::fs::statat(at, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink
        })
    };
    if e == Errno::NOTDIR && link() {
        Errno::LOOP
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bc-beneath-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    /// A root with `inside/` and a symbolic link `link` to a directory outside it.
    fn planted(name: &str) -> (PathBuf, PathBuf, Beneath) {
        let base = temp(name);
        let (root, outside) = (base.join("root"), base.join("outside"));
        std::fs::create_dir_all(root.join("inside")).expect("inside");
        std::fs::create_dir_all(&outside).expect("outside");
        std::fs::write(outside.join("victim"), b"keep").expect("victim");
        std::os::unix::fs::symlink(&outside, root.join("link")).expect("dir link");
        std::os::unix::fs::symlink(outside.join("victim"), root.join("file-link")).expect("link");
        let b = Beneath::open(&root).expect("root");
        (root, outside, b)
    }

    #[test]
    fn files_are_made_and_read_beneath_the_root() {
        let root = temp("plain");
        let b = Beneath::open(&root).expect("root");
        b.create_dirs(&root.join("a/b")).expect("dirs");
        b.create_dirs(Path::new("a/b")).expect("again");
        let mut f = b
            .open_file(&root.join("a/b/x"), Access::Create)
            .expect("create");
        f.write_all(b"hello").expect("write");
        let mut s = String::new();
        b.open_file(Path::new("a/b/x"), Access::Read)
            .expect("read")
            .read_to_string(&mut s)
            .expect("read");
        assert_eq!(s, "hello");
        let e = b.entry(Path::new("a/b/x")).expect("entry");
        assert_eq!(
            e,
            Some(Entry {
                file: true,
                links: 1
            })
        );
        b.rename(Path::new("a/b/x"), Path::new("a/b/y"))
            .expect("rename");
        assert_eq!(
            b.list(Path::new("a/b")).expect("list"),
            vec![OsString::from("y")]
        );
        b.sync_dir(Path::new("a/b")).expect("sync");
        b.remove_file(Path::new("a/b/y")).expect("remove");
        assert_eq!(b.entry(Path::new("a/b/y")).expect("gone"), None);
        assert_eq!(b.entry(Path::new("no/such/dir")).expect("no dir"), None);
    }

    #[test]
    fn symbolic_links_under_the_root_are_never_followed() {
        let (root, outside, b) = planted("links");
        for p in ["link/victim", "file-link", "link/new", "link/sub/new"] {
            let e = b.open_file(&root.join(p), Access::Create).expect_err(p);
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{p}: {e}");
            assert!(e.to_string().contains("not followed"), "{e}");
        }
        let e = b
            .create_dirs(&root.join("link/sub"))
            .expect_err("a dir link");
        assert!(e.to_string().contains("not followed"), "{e}");
        let e = b
            .entry(&root.join("link/x"))
            .expect_err("a dir link on the way");
        assert!(e.to_string().contains("not followed"), "{e}");
        assert!(b
            .open_file(Path::new("../outside/victim"), Access::Read)
            .is_err());
        assert!(b
            .open_file(Path::new("/etc/hostname"), Access::Read)
            .is_err());
        // A link is something that exists (so it is not overwritten), and is removed itself.
        let e = b.entry(Path::new("file-link")).expect("entry");
        assert_eq!(e.map(|e| e.file), Some(false));
        b.remove_file(Path::new("file-link")).expect("remove");
        assert_eq!(
            std::fs::read(outside.join("victim")).expect("victim"),
            b"keep"
        );
        assert!(!outside.join("new").exists() && !outside.join("sub").exists());
        b.open_file(Path::new("inside/ok"), Access::Create)
            .expect("a plain file still opens");
    }

    #[test]
    fn the_walk_without_openat2_refuses_links_too() {
        let (root, outside, b) = planted("walk");
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(0o644);
        for p in ["link/victim", "file-link", "link/new"] {
            let e = walk(&b.root, Path::new(p), flags, mode).expect_err(p);
            assert_eq!(e, Errno::LOOP, "{p}");
        }
        assert!(walk(&b.root, Path::new("../outside/victim"), flags, mode).is_err());
        walk(&b.root, Path::new("inside/ok"), flags, mode).expect("a plain file opens");
        assert!(root.join("inside/ok").exists());
        assert_eq!(
            std::fs::read(outside.join("victim")).expect("victim"),
            b"keep"
        );
        assert!(!outside.join("new").exists());
    }
}
