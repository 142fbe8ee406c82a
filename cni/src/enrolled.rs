//! The enrolled-namespaces file: ztunnel's list of the namespaces in the mesh,
//! which the plugin reads only when ztunnel itself cannot be asked.
//!
//! The file sits beside ztunnel's socket, is UTF-8, and holds one namespace per
//! line; empty lines and lines starting with `#` are ignored, as is whitespace
//! around a name. ztunnel rewrites it atomically (write then rename), so a
//! reader sees either the old list or the new one.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
};

/// The file could not be read (including: it does not exist, or is not UTF-8).
#[derive(Debug)]
pub struct Error {
    /// The file's path.
    pub path: PathBuf,
    /// Why it could not be read.
    pub source: io::Error,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot read the enrolled-namespaces file {}",
            self.path.display()
        )
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Whether a namespace is in the mesh, according to the file.
#[derive(Debug)]
pub enum Membership {
    /// The file lists the namespace.
    Listed,
    /// The file was read and does not list the namespace.
    NotListed,
    /// The file could not be read, so the namespace may be in the mesh:
    /// typically ztunnel has not started on this node yet.
    Unknown(Error),
}

/// Looks `namespace` up in the file at `path`.
pub fn membership(path: &Path, namespace: &str) -> Membership {
    match fs::read_to_string(path) {
        Ok(text) if lists(&text, namespace) => Membership::Listed,
        Ok(_) => Membership::NotListed,
        Err(source) => Membership::Unknown(Error {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Whether the file's text lists `namespace`.
fn lists(text: &str, namespace: &str) -> bool {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .any(|line| line == namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_namespaces_and_comments_are_skipped() {
        let text = "# written by ztunnel\n\ndemo\n  shop \r\n#kube-system\n";
        assert!(lists(text, "demo"));
        assert!(lists(text, "shop"));
        assert!(!lists(text, "kube-system"));
        assert!(!lists(text, "#kube-system"));
        assert!(!lists(text, "dem"));
        assert!(!lists(text, ""));
    }

    #[test]
    fn reads_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enrolled-namespaces");
        fs::write(&path, "demo\n").unwrap();
        assert!(matches!(membership(&path, "demo"), Membership::Listed));
        assert!(matches!(membership(&path, "other"), Membership::NotListed));
    }

    #[test]
    fn missing_or_non_utf8_file_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enrolled-namespaces");
        let Membership::Unknown(error) = membership(&path, "demo") else {
            panic!("a missing file must be unknown");
        };
        assert_eq!(error.source.kind(), io::ErrorKind::NotFound);
        assert!(error.to_string().contains("enrolled-namespaces"));
        fs::write(&path, b"demo\n\xff\n").unwrap();
        assert!(matches!(membership(&path, "demo"), Membership::Unknown(_)));
    }
}
