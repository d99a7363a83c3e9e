//! Input and output paths that must be regular files.
//!
//! sdtrace reads traces by position and writes them in place, so a FIFO, a socket, a device
//! or a directory in their place would block forever (a FIFO without a writer), read garbage
//! (`/dev/urandom`) or lose the recording (`/dev/null`). [`check_regular`] looks at the path
//! before anything opens it and names what it found, so every reader and writer refuses such
//! a path at once with one clear message instead of hanging.

use std::path::Path;

/// What kind of file system object `path` is, when it is not a regular file.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
    }
    "not a regular file"
}

/// `Err(kind)` when `path` exists and is not a regular file (after following links); `Ok` for
/// a regular file and for a path that does not exist (opening it then says so).
pub fn check_regular(path: &Path) -> Result<(), &'static str> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => Err(kind_of(&meta)),
        _ => Ok(()),
    }
}

/// [`check_regular`] as an `io::Error` whose message names the path's kind and the fix, for
/// callers that report I/O errors with their own context (`--map FILE: …`).
pub fn require_regular(path: &Path) -> std::io::Result<()> {
    check_regular(path).map_err(|kind| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("it is {kind}, not a regular file; pass a regular file (copy a stream to a file first)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_and_devices_are_named_and_files_pass() {
        let dir = std::env::temp_dir();
        assert_eq!(check_regular(&dir), Err("a directory"));
        assert_eq!(check_regular(&dir.join("sdtrace-no-such-file")), Ok(()));
        #[cfg(unix)]
        {
            assert_eq!(
                check_regular(Path::new("/dev/null")),
                Err("a character device")
            );
            let e = require_regular(Path::new("/dev/null")).unwrap_err();
            assert!(e.to_string().contains("character device"), "{e}");
        }
        let f = dir.join(format!("sdtrace-files-{}", std::process::id()));
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(check_regular(&f), Ok(()));
        std::fs::remove_file(&f).unwrap();
    }
}
