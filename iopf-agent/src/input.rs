//! Reading a configuration file given on the command line (policy, scenario) without
//! trusting what the path names: only a regular file is read, opened non-blocking so a FIFO
//! cannot hang the agent, and never past a size cap, so `/dev/zero` or a huge file is
//! refused instead of filling memory.

use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum InputError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a regular file ({0}): give the path of a file")]
    NotRegular(&'static str),
    #[error("larger than {cap} bytes: split it into several files")]
    TooLarge { cap: u64 },
    #[error("not UTF-8 text")]
    NotText,
}

fn kind(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

/// The regular file at `path`, opened for reading (anything else refused without waiting).
pub fn open_regular(path: &Path) -> Result<std::fs::File, InputError> {
    // Non-blocking: opening a FIFO for reading would otherwise wait for a writer.
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Err(InputError::NotRegular(kind(meta.file_type())));
    }
    Ok(f)
}

/// The text of the regular file at `path`, at most `cap` bytes.
pub fn read_text(path: &Path, cap: u64) -> Result<String, InputError> {
    let f = open_regular(path)?;
    let meta = f.metadata()?;
    if meta.len() > cap {
        return Err(InputError::TooLarge { cap });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // One byte past the cap tells a file that grew since the stat.
    f.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(InputError::TooLarge { cap });
    }
    String::from_utf8(bytes).map_err(|_| InputError::NotText)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_small_regular_file() {
        assert!(matches!(
            read_text(Path::new("/dev/zero"), 1 << 20),
            Err(InputError::NotRegular("a character device"))
        ));
        assert!(matches!(read_text(Path::new("/"), 1 << 20), Err(InputError::NotRegular("a directory"))));
        let dir = std::env::temp_dir().join(format!("iopf-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(read_text(&fifo, 1 << 20), Err(InputError::NotRegular("a FIFO"))));
        let big = dir.join("big.yaml");
        std::fs::write(&big, vec![b'a'; 101]).unwrap();
        assert!(matches!(read_text(&big, 100), Err(InputError::TooLarge { cap: 100 })));
        assert_eq!(read_text(&big, 101).unwrap().len(), 101);
        std::fs::write(&big, [0xff, 0xfe]).unwrap();
        assert!(matches!(read_text(&big, 100), Err(InputError::NotText)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
