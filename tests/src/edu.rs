//! QEMU's `edu` test device as a DMA engine: with no driver bound it sits in the kernel's
//! default DMA domain where nothing is mapped for it, so every DMA faults in the IOMMU.
//! Registers (BAR0): 0x80 source, 0x88 destination, 0x90 count, 0x98 command (bit 0 start,
//! bit 1 direction edu -> RAM); edu's own buffer is at device address 0x40000.

use std::{
    fs::OpenOptions,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

const EDU_BUF: u64 = 0x40000;

pub struct Edu {
    pub bdf: String,
    regs: *mut u8,
    len: usize,
}

/// Direction of a DMA as the IOMMU sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The device reads RAM (RAM -> edu).
    Read,
    /// The device writes RAM (edu -> RAM).
    Write,
}

impl Edu {
    /// The edu device's PCI address (1234:11e8).
    pub fn find() -> Result<String, String> {
        std::fs::read_dir("/sys/bus/pci/devices")
            .map_err(|e| e.to_string())?
            .flatten()
            .find(|d| {
                let r = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap_or_default();
                r("vendor").trim() == "0x1234" && r("device").trim() == "0x11e8"
            })
            .map(|d| d.file_name().to_string_lossy().into_owned())
            .ok_or_else(|| "no edu device (1234:11e8): boot QEMU with -device edu".into())
    }

    /// Finds edu, enables memory decoding and bus mastering, maps BAR0 (sysfs; no driver).
    pub fn open() -> Result<Self, String> {
        let bdf = Self::find()?;
        let dir = format!("/sys/bus/pci/devices/{bdf}");
        let mut cfg =
            OpenOptions::new().read(true).write(true).open(format!("{dir}/config")).map_err(|e| e.to_string())?;
        let mut cmd = [0u8; 2];
        cfg.seek(SeekFrom::Start(4)).and_then(|_| cfg.read_exact(&mut cmd)).map_err(|e| e.to_string())?;
        let v = u16::from_le_bytes(cmd) | 0x6; // MEM | BUSMASTER
        cfg.seek(SeekFrom::Start(4)).and_then(|_| cfg.write_all(&v.to_le_bytes())).map_err(|e| e.to_string())?;
        let res =
            OpenOptions::new().read(true).write(true).open(format!("{dir}/resource0")).map_err(|e| e.to_string())?;
        let len = res.metadata().map_err(|e| e.to_string())?.len() as usize;
        // SAFETY: shared mapping of the BAR's sysfs resource file; checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                res.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap {dir}/resource0: {}", std::io::Error::last_os_error()));
        }
        Ok(Self { bdf, regs: p.cast(), len })
    }

    /// edu owned through VFIO (its domain is the caller's container): memory decoding and
    /// bus mastering through VFIO's config region, BAR0 through the device fd.
    pub fn open_vfio(dev: &crate::vfio::VfioDevice) -> Result<Self, String> {
        dev.enable_command(0x6)?;
        let (regs, len) = dev.map_bar0()?;
        Ok(Self { bdf: dev.bdf.clone(), regs, len })
    }

    fn w64(&self, off: usize, v: u64) {
        // SAFETY: `off` is one of edu's 8-byte registers, inside the mapped BAR.
        unsafe { std::ptr::write_volatile(self.regs.add(off).cast::<u64>(), v) }
    }
    fn r64(&self, off: usize) -> u64 {
        // SAFETY: as above.
        unsafe { std::ptr::read_volatile(self.regs.add(off).cast::<u64>()) }
    }

    /// One 4-byte DMA to/from `iova`; waits for edu to finish (it runs from a 100 ms timer).
    pub fn dma(&self, iova: u64, access: Access) -> Result<(), String> {
        let (src, dst, cmd) = match access {
            Access::Read => (iova, EDU_BUF, 1),
            Access::Write => (EDU_BUF, iova, 1 | 2),
        };
        self.w64(0x80, src);
        self.w64(0x88, dst);
        self.w64(0x90, 4);
        self.w64(0x98, cmd);
        let t = Instant::now();
        while self.r64(0x98) & 1 != 0 {
            if t.elapsed() > Duration::from_secs(5) {
                return Err("edu DMA did not complete".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for Edu {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `open`.
        unsafe { libc::munmap(self.regs.cast(), self.len) };
    }
}
