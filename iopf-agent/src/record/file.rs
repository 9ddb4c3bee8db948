//! Writing and reading the recording file.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    path::Path,
};

use iopf_common::{
    amdvi::AmdviEvent, dmar::DmarEvent, iopf::Consts, iopf::Event, smmu::SmmuEvent, vtd_report::ReportWalkEvent,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{KIND_AMDVI, KIND_DMAR, KIND_IOPF, KIND_PAGE_REQUEST, KIND_SMMU, MAGIC, READS, SCHEMA, VERSION};

#[derive(Debug, Error)]
pub enum RecordError {
    #[error("`{path}`: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("`{path}`: {source}")]
    Input { path: String, source: crate::input::InputError },
    #[error("`{path}` is not an iopf recording (no `IOPFREC` magic)")]
    NotRecording { path: String },
    #[error(
        "`{path}`: recording format {got} is not one this agent reads ({READS:?}; the agent that wrote it can replay it)"
    )]
    Version { path: String, got: u32 },
    #[error("`{path}`: bad header: {message}")]
    Header { path: String, message: String },
    #[error("`{path}`: record {index} at byte {offset}: {message}")]
    Record { path: String, index: u64, offset: u64, message: String },
}

/// Record sizes of the writing agent: a reader with other layouts refuses the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub iopf_event: usize,
    pub dmar_event: usize,
    /// Walked page requests; a recording made before they existed holds none, so any
    /// size reads it.
    #[serde(default = "page_request_size")]
    pub page_request_event: usize,
    /// SMMUv3 event records and AMD-Vi entries: as for walks, a file from before them holds
    /// none.
    #[serde(default = "smmu_size")]
    pub smmu_event: usize,
    #[serde(default = "amdvi_size")]
    pub amdvi_event: usize,
}

fn page_request_size() -> usize {
    size_of::<ReportWalkEvent>()
}

fn smmu_size() -> usize {
    size_of::<SmmuEvent>()
}

/// `SmmuEvent` before it carried our walk (which its last 24 bytes hold): such records read
/// as not walked.
const SMMU_EVENT_UNWALKED: usize = 112;

fn amdvi_size() -> usize {
    size_of::<AmdviEvent>()
}

impl Layout {
    pub fn here() -> Self {
        Layout {
            iopf_event: size_of::<Event>(),
            dmar_event: size_of::<DmarEvent>(),
            page_request_event: page_request_size(),
            smmu_event: smmu_size(),
            amdvi_event: amdvi_size(),
        }
    }
}

/// One hook of the attach plan, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedHook {
    pub name: String,
    pub rung: String,
    pub state: String,
    pub target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub schema: String,
    pub agent_version: String,
    pub kernel: String,
    /// RFC 3339 UTC.
    pub started: String,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC at start, ns (event times are monotonic).
    pub clock_offset_ns: i64,
    /// `kernel` or `simulated`.
    pub source: String,
    pub consts: ConstsJson,
    pub layout: Layout,
    pub hooks: Vec<PlannedHook>,
    /// What selectors can see of the devices at start (so policies can be checked against
    /// the recording later, anywhere).
    pub devices: Vec<RecordedDevice>,
    /// Policy id -> name of the policies loaded when recording started (events carry ids).
    /// A policy first loaded by a later reload shows as its id only.
    pub policies: Vec<(u32, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedDevice {
    pub name: String,
    pub bus: String,
    pub driver: Option<String>,
    pub vendor_device: Option<(u16, u16)>,
    pub iommu_group: Option<u32>,
}

impl RecordedDevice {
    pub fn of(d: &crate::policy::SysfsDevice) -> Self {
        RecordedDevice {
            name: d.name.clone(),
            bus: d.bus.clone(),
            driver: d.driver.clone(),
            vendor_device: d.vendor_device,
            iommu_group: d.iommu_group,
        }
    }

    pub fn sysfs(&self) -> crate::policy::SysfsDevice {
        crate::policy::SysfsDevice {
            name: self.name.clone(),
            bus: self.bus.clone(),
            driver: self.driver.clone(),
            vendor_device: self.vendor_device,
            iommu_group: self.iommu_group,
        }
    }
}

/// The IOPF flag constants the events were produced with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConstsJson {
    pub flag_pasid_valid: u32,
    pub flag_last_page: u32,
    pub flag_needs_pasid: u32,
}

impl ConstsJson {
    pub fn of(c: &Consts) -> Self {
        ConstsJson {
            flag_pasid_valid: c.flag_pasid_valid,
            flag_last_page: c.flag_last_page,
            flag_needs_pasid: c.flag_needs_pasid,
        }
    }

    /// Consts for rendering (the fields events need; the rest from this agent).
    pub fn apply(&self, base: Consts) -> Consts {
        Consts {
            flag_pasid_valid: self.flag_pasid_valid,
            flag_last_page: self.flag_last_page,
            flag_needs_pasid: self.flag_needs_pasid,
            ..base
        }
    }
}

/// Where event times come from: the kernel's monotonic clock, or a simulation's own clock
/// that starts at 0 when the recording does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    Monotonic,
    FromStart,
}

impl Header {
    pub fn new(
        kernel: &str,
        source: &str,
        consts: &Consts,
        hooks: Vec<PlannedHook>,
        devices: Vec<RecordedDevice>,
        times: Times,
    ) -> Self {
        let clock = crate::trace::clock::WallClock::now();
        let now = monotonic_now();
        let offset = match times {
            Times::Monotonic => clock.offset_ns(),
            Times::FromStart => clock.offset_ns() + i128::from(now),
        };
        Header {
            schema: SCHEMA.into(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            kernel: kernel.into(),
            started: clock.rfc3339(now),
            clock_offset_ns: offset as i64,
            source: source.into(),
            consts: ConstsJson::of(consts),
            layout: Layout::here(),
            hooks,
            devices,
            policies: Vec::new(),
        }
    }
}

fn monotonic_now() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// One recorded event.
#[derive(Debug, Clone, Copy)]
pub enum Record {
    Iopf(Event),
    Dmar(DmarEvent),
    PageRequest(ReportWalkEvent),
    Smmu(SmmuEvent),
    Amdvi(AmdviEvent),
}

/// Bytes of `v` (a `#[repr(C)]` record of plain integers).
fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a plain-old-data record (integers and byte arrays, explicit padding), so
    // every byte is initialised; the slice borrows `v`.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

/// Appends one record to `out` (the ring readers' render step).
pub fn encode(out: &mut Vec<u8>, r: &Record) {
    let (kind, b) = match r {
        Record::Iopf(e) => (KIND_IOPF, bytes_of(e)),
        Record::Dmar(e) => (KIND_DMAR, bytes_of(e)),
        Record::PageRequest(e) => (KIND_PAGE_REQUEST, bytes_of(e)),
        Record::Smmu(e) => (KIND_SMMU, bytes_of(e)),
        Record::Amdvi(e) => (KIND_AMDVI, bytes_of(e)),
    };
    out.push(kind);
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

/// The file start: magic, version, header.
pub fn preamble(h: &Header) -> Vec<u8> {
    let json = serde_json::to_vec(h).unwrap_or_default();
    let mut out = Vec::with_capacity(16 + json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

/// A recording being written (buffered; `flush` on stop). Clones share the file: the IOPF
/// and VT-d streams write whole records under its lock.
#[derive(Clone)]
pub struct Writer {
    out: std::sync::Arc<std::sync::Mutex<BufWriter<File>>>,
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

impl Writer {
    /// Creates `path` (refusing to overwrite anything but a regular file) and writes the header.
    pub fn create(path: &Path, h: &Header) -> Result<Self, RecordError> {
        let p = path.display().to_string();
        if let Ok(md) = std::fs::metadata(path)
            && !md.is_file()
        {
            let e = std::io::Error::other("exists and is not a regular file: give a file path");
            return Err(RecordError::Io { path: p, source: e });
        }
        let f = File::create(path).map_err(|source| RecordError::Io { path: p.clone(), source })?;
        let mut out = BufWriter::with_capacity(1 << 16, f);
        out.write_all(&preamble(h)).map_err(|source| RecordError::Io { path: p, source })?;
        Ok(Writer { out: std::sync::Arc::new(std::sync::Mutex::new(out)) })
    }
}

/// Largest header accepted (a plan of a few dozen hooks is a few KiB).
const HEADER_MAX: u32 = 1 << 20;

/// A recording being read, record by record (memory stays bounded whatever its size).
pub struct Reader {
    path: String,
    input: BufReader<File>,
    pub header: Header,
    index: u64,
    offset: u64,
    /// The file's SMMUv3 record size: this agent's, or `SMMU_EVENT_UNWALKED`.
    smmu_size: usize,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Self, RecordError> {
        let p = path.display().to_string();
        let f = crate::input::open_regular(path).map_err(|source| RecordError::Input { path: p.clone(), source })?;
        let mut input = BufReader::with_capacity(1 << 16, f);
        let io = |source| RecordError::Io { path: p.clone(), source };
        let mut head = [0u8; 16];
        if input.read_exact(&mut head).is_err() || &head[..8] != MAGIC {
            return Err(RecordError::NotRecording { path: p });
        }
        let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        if !READS.contains(&version) {
            return Err(RecordError::Version { path: p, got: version });
        }
        let len = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes"));
        if len > HEADER_MAX {
            return Err(RecordError::Header { path: p, message: format!("{len} bytes (at most {HEADER_MAX})") });
        }
        let mut json = vec![0u8; len as usize];
        if let Err(e) = input.read_exact(&mut json) {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                return Err(RecordError::Header {
                    path: p,
                    message: "cut short (the recording was interrupted?)".into(),
                });
            }
            return Err(io(e));
        }
        let header: Header = serde_json::from_slice(&json)
            .map_err(|e| RecordError::Header { path: p.clone(), message: e.to_string() })?;
        let here = Layout::here();
        let unwalked_smmu = Layout { smmu_event: SMMU_EVENT_UNWALKED, ..here };
        if header.layout != here && header.layout != unwalked_smmu {
            let message = format!(
                "recorded with record sizes {:?}, this agent's are {:?} (replay it with the agent {} that wrote it)",
                header.layout,
                Layout::here(),
                header.agent_version
            );
            return Err(RecordError::Header { path: p, message });
        }
        let smmu_size = header.layout.smmu_event;
        Ok(Reader { path: p, input, header, index: 0, offset: 16 + u64::from(len), smmu_size })
    }

    /// The next record; `Ok(None)` at a clean end of file.
    pub fn next_record(&mut self) -> Result<Option<Record>, RecordError> {
        let mut head = [0u8; 3];
        match read_full(&mut self.input, &mut head) {
            Ok(0) => return Ok(None),
            Ok(3) => {}
            Ok(_) => return Err(self.bad("cut short in its header (the recording was interrupted?)")),
            Err(source) => return Err(RecordError::Io { path: self.path.clone(), source }),
        }
        let len = u16::from_le_bytes([head[1], head[2]]) as usize;
        let want = match head[0] {
            super::KIND_IOPF => size_of::<Event>(),
            super::KIND_DMAR => size_of::<DmarEvent>(),
            super::KIND_PAGE_REQUEST => size_of::<ReportWalkEvent>(),
            super::KIND_SMMU => self.smmu_size,
            super::KIND_AMDVI => size_of::<AmdviEvent>(),
            k => return Err(self.bad(&format!("unknown kind {k}"))),
        };
        if len != want {
            return Err(self.bad(&format!("length {len}, want {want}")));
        }
        // Room for the whole record: a shorter one (`SMMU_EVENT_UNWALKED`) ends in zeros.
        let mut buf = vec![0u8; len.max(size_of::<SmmuEvent>())];
        match read_full(&mut self.input, &mut buf[..len]) {
            Ok(n) if n == len => {}
            Ok(_) => return Err(self.bad("cut short (the recording was interrupted?)")),
            Err(source) => return Err(RecordError::Io { path: self.path.clone(), source }),
        }
        // SAFETY: `buf` holds at least size_of::<T>() bytes (the record, then zeros where it
        // is an unwalked SMMUv3 one) of plain integers, for which every bit pattern is valid;
        // read_unaligned copes with the Vec's alignment.
        let r = unsafe {
            match head[0] {
                super::KIND_IOPF => Record::Iopf(std::ptr::read_unaligned(buf.as_ptr().cast::<Event>())),
                super::KIND_DMAR => Record::Dmar(std::ptr::read_unaligned(buf.as_ptr().cast::<DmarEvent>())),
                super::KIND_SMMU => Record::Smmu(std::ptr::read_unaligned(buf.as_ptr().cast::<SmmuEvent>())),
                super::KIND_AMDVI => Record::Amdvi(std::ptr::read_unaligned(buf.as_ptr().cast::<AmdviEvent>())),
                _ => Record::PageRequest(std::ptr::read_unaligned(buf.as_ptr().cast::<ReportWalkEvent>())),
            }
        };
        self.index += 1;
        self.offset += 3 + len as u64;
        Ok(Some(r))
    }

    fn bad(&self, message: &str) -> RecordError {
        RecordError::Record { path: self.path.clone(), index: self.index, offset: self.offset, message: message.into() }
    }
}

/// Reads until `buf` is full or the input ends; the number of bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Where a stream's rendered bytes go: stdout, or the recording.
#[derive(Clone)]
pub enum Sink {
    Stdout,
    File(Writer),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Stdout => std::io::stdout().lock().write(buf),
            Sink::File(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout => std::io::stdout().lock().flush(),
            Sink::File(w) => w.flush(),
        }
    }
}

impl PlannedHook {
    pub fn of(p: &crate::hooks::Plan) -> Self {
        PlannedHook {
            name: p.name.to_owned(),
            rung: p.rung.as_str().to_owned(),
            state: p.state.as_str().to_owned(),
            target: p.target.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(version: u32, header: &serde_json::Value, records: &[Record]) -> std::path::PathBuf {
        let json = serde_json::to_vec(header).unwrap();
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        for r in records {
            encode(&mut out, r);
        }
        let p = std::env::temp_dir().join(format!("iopf-rec-{}-{version}.iopf", std::process::id()));
        std::fs::write(&p, out).unwrap();
        p
    }

    fn walked() -> ReportWalkEvent {
        // SAFETY: plain integers (and a Pod walk record): all-zero is valid.
        let mut e: ReportWalkEvent = unsafe { std::mem::zeroed() };
        e.addr = 0x101000;
        e.grpid = 7;
        e.source_id = 0x18;
        e.walk.stop = iopf_common::walk::Stop::NotPresent as u8;
        e.walk.reads = 7;
        e
    }

    #[test]
    fn smmu_records_from_before_walks_read_as_not_walked() {
        // SAFETY: plain integers and byte arrays: all-zero is valid.
        let mut s: SmmuEvent = unsafe { std::mem::zeroed() };
        s.raw = [0x0000_0008_0000_0010, 0x0000_0208_0000_0000, 0x123000, 0];
        s.sid = 8;
        s.addr = 0x123000;
        s.dev[..12].copy_from_slice(b"0000:00:01.0");
        let h = Header::new("k", "kernel", &crate::kabi::iopf::CURRENT_CONSTS, vec![], vec![], Times::Monotonic);
        let mut old = serde_json::to_value(&h).unwrap();
        old["layout"]["smmu_event"] = 112.into();
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        let json = serde_json::to_vec(&old).unwrap();
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        // The record as the agent before walks wrote it: its first 112 bytes.
        out.push(KIND_SMMU);
        out.extend_from_slice(&112u16.to_le_bytes());
        out.extend_from_slice(&bytes_of(&s)[..112]);
        let p = std::env::temp_dir().join(format!("iopf-rec-unwalked-{}.iopf", std::process::id()));
        std::fs::write(&p, &out).unwrap();
        let mut r = Reader::open(&p).unwrap();
        let Some(Record::Smmu(e)) = r.next_record().unwrap() else { panic!("an SMMUv3 record") };
        assert_eq!((e.walk, e.walk_ns, e.raw, e.dev), (iopf_common::walk::Walk::NONE, 0, s.raw, s.dev));
        assert!(r.next_record().unwrap().is_none());
        // A 136-byte record in that file is refused: its size is the file's, 112.
        out.truncate(out.len() - 115);
        out.push(KIND_SMMU);
        out.extend_from_slice(&136u16.to_le_bytes());
        out.extend_from_slice(bytes_of(&s));
        std::fs::write(&p, &out).unwrap();
        let mut r = Reader::open(&p).unwrap();
        let e = r.next_record().unwrap_err().to_string();
        assert!(e.contains("length 136, want 112"), "{e}");
        std::fs::remove_file(p).ok();
    }

    #[test]
    fn smmu_and_amdvi_records_read_back_and_a_version_3_file_still_reads() {
        // SAFETY: plain integers and byte arrays: all-zero is valid.
        let mut s: SmmuEvent = unsafe { std::mem::zeroed() };
        s.raw = [0x0000_0008_0000_0010, 0x0000_0288_0000_0000, 0x123000, 0x123000];
        s.sid = 8;
        s.level = iopf_common::iopf::Level::Second as u8;
        // SAFETY: as above.
        let mut a: AmdviEvent = unsafe { std::mem::zeroed() };
        a.raw = [0x20, 0x200a_0000, 0, 0];
        a.devid = 0x20;
        a.flags = 0xa;
        let h = Header::new("k", "kernel", &crate::kabi::iopf::CURRENT_CONSTS, vec![], vec![], Times::Monotonic);
        let v4 = serde_json::to_value(&h).unwrap();
        let p = file(VERSION, &v4, &[Record::Smmu(s), Record::Amdvi(a), Record::Smmu(s)]);
        let mut r = Reader::open(&p).unwrap();
        assert!(matches!(r.next_record().unwrap(), Some(Record::Smmu(e)) if e == s));
        assert!(matches!(r.next_record().unwrap(), Some(Record::Amdvi(e)) if e == a));
        assert!(matches!(r.next_record().unwrap(), Some(Record::Smmu(e)) if e == s));
        assert!(r.next_record().unwrap().is_none());
        // What a version-3 agent wrote: no SMMUv3 or AMD-Vi sizes, no such records.
        let mut v3 = v4;
        let layout = v3["layout"].as_object_mut().unwrap();
        layout.remove("smmu_event");
        layout.remove("amdvi_event");
        v3["schema"] = "iopf.dev/recording/v3".into();
        let p = file(3, &v3, &[Record::PageRequest(walked())]);
        let mut r = Reader::open(&p).unwrap();
        assert_eq!(r.header.layout, Layout::here());
        assert!(matches!(r.next_record().unwrap(), Some(Record::PageRequest(_))));
        assert!(r.next_record().unwrap().is_none());
        std::fs::remove_file(p).ok();
    }

    #[test]
    fn a_walked_page_request_reads_back_and_a_version_2_file_still_reads() {
        let h = Header::new("k", "kernel", &crate::kabi::iopf::CURRENT_CONSTS, vec![], vec![], Times::Monotonic);
        let v3 = serde_json::to_value(&h).unwrap();
        let p = file(VERSION, &v3, &[Record::PageRequest(walked())]);
        let mut r = Reader::open(&p).unwrap();
        assert!(matches!(r.next_record().unwrap(), Some(Record::PageRequest(e)) if e == walked()));
        assert!(r.next_record().unwrap().is_none());
        // What a version-2 agent wrote: no walk size in the layout, no walks.
        let mut v2 = v3.clone();
        v2["layout"].as_object_mut().unwrap().remove("page_request_event");
        v2["schema"] = "iopf.dev/recording/v2".into();
        let p = file(2, &v2, &[]);
        let mut r = Reader::open(&p).unwrap();
        assert_eq!(r.header.layout, Layout::here());
        assert!(r.next_record().unwrap().is_none());
        // A walk of another size than this agent's is refused at the header.
        let mut other = v3;
        other["layout"]["page_request_event"] = 64.into();
        let p = file(VERSION, &other, &[]);
        let e = Reader::open(&p).err().expect("refused");
        assert!(e.to_string().contains("record sizes"), "{e}");
        std::fs::remove_file(p).ok();
    }
}
