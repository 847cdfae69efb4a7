//! The Python face of the native cores: argument conversion, GIL release, error mapping.
//! Every algorithm lives in its own pure-Rust module; nothing here decides anything.

use crate::canonical::{self, CanonicalError};
use crate::gcra::{Decision as CoreDecision, Limit, LimitError};
use crate::hash;
use crate::image::{self, ImageError as CoreImageError};
use crate::limiter::KeyedLimiter;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

pyo3::create_exception!(
    _native,
    ImageError,
    PyValueError,
    "Data that is not a supported image (unknown, truncated or corrupt), or one too large."
);

/// Inputs at least this large are hashed with the GIL released; below it, releasing and
/// re-taking the GIL costs more than the hash.
const DETACH_MIN_BYTES: usize = 2048;

/// A borrowed view of a bytes-like object: `bytes` directly, anything else through the buffer
/// protocol (which pins the memory for as long as the view lives).
enum Bytes<'py> {
    Immutable(Bound<'py, PyBytes>),
    Buffer(PyBuffer<u8>),
}

impl<'py> Bytes<'py> {
    fn from_object(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(bytes) = obj.cast::<PyBytes>() {
            return Ok(Bytes::Immutable(bytes.clone()));
        }
        if obj.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(
                "expected bytes, bytearray or memoryview, got str: encode text before hashing",
            ));
        }
        let buffer = PyBuffer::<u8>::get(obj).map_err(|_| {
            PyTypeError::new_err(format!(
                "expected bytes, bytearray or a contiguous memoryview of bytes, got {}",
                obj.get_type()
                    .name()
                    .map_or_else(|_| "?".into(), |n| n.to_string())
            ))
        })?;
        if !buffer.is_c_contiguous() {
            return Err(PyValueError::new_err(
                "memoryview is not contiguous: pass bytes(view) or a contiguous slice",
            ));
        }
        Ok(Bytes::Buffer(buffer))
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Immutable(bytes) => bytes.as_bytes(),
            // SAFETY: the buffer is C-contiguous with `u8` items (checked in `from_object`) and
            // the exporter keeps the memory alive and unresized while `PyBuffer` holds the export.
            // A mutable exporter (bytearray) may still be written by another thread while the GIL
            // is released: the digest is then of some interleaving of old and new bytes, exactly
            // as with hashlib. Callers who share such buffers across threads must not mutate them.
            Bytes::Buffer(buffer) => unsafe {
                std::slice::from_raw_parts(buffer.buf_ptr() as *const u8, buffer.len_bytes())
            },
        }
    }
}

/// Runs `f` over `data`, with the GIL released when `data` is large enough to be worth it.
fn run_on<R: Send>(py: Python<'_>, data: &[u8], f: impl FnOnce(&[u8]) -> R + Send) -> R {
    if data.len() >= DETACH_MIN_BYTES {
        py.detach(|| f(data))
    } else {
        f(data)
    }
}

/// SHA-256 digest (32 bytes) of a bytes-like object.
#[pyfunction]
pub fn sha256<'py>(py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let view = Bytes::from_object(data)?;
    let digest = run_on(py, view.as_slice(), hash::sha256);
    Ok(PyBytes::new(py, &digest))
}

/// SHA-256 digests of many bytes-like objects, hashed in parallel with the GIL released.
#[pyfunction]
pub fn sha256_many<'py>(
    py: Python<'py>,
    items: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    let views = items
        .try_iter()?
        .map(|item| Bytes::from_object(&item?))
        .collect::<PyResult<Vec<_>>>()?;
    let slices: Vec<&[u8]> = views.iter().map(Bytes::as_slice).collect();
    let digests = py.detach(|| hash::sha256_many(&slices));
    PyList::new(py, digests.iter().map(|d| PyBytes::new(py, d)))
}

/// Format, dimensions and SHA-256 of an image, read from its headers.
#[pyclass(frozen, get_all, module = "gateway._native")]
pub struct ImageInfo {
    /// `"png"`, `"jpeg"`, `"webp"` or `"gif"`.
    format: &'static str,
    /// Width in pixels.
    width: u32,
    /// Height in pixels.
    height: u32,
    /// SHA-256 of the whole file.
    sha256: Py<PyBytes>,
}

#[pymethods]
impl ImageInfo {
    fn __repr__(&self) -> String {
        format!(
            "ImageInfo(format={:?}, width={}, height={})",
            self.format, self.width, self.height
        )
    }
}

fn image_error(err: CoreImageError) -> PyErr {
    ImageError::new_err(err.to_string())
}

// PyO3 writes only literal defaults into the Python signature (`inspect.signature`, stubtest),
// so `inspect_image`'s default is spelled out; this keeps it equal to the named constant.
const _: () = assert!(image::DEFAULT_MAX_SIDE == 16384);

/// Sniffs an image's format and size from its headers and hashes it, in one call.
#[pyfunction]
#[pyo3(signature = (data, max_side = 16384))]
pub fn inspect_image<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    max_side: u32,
) -> PyResult<ImageInfo> {
    let view = Bytes::from_object(data)?;
    let (header, digest) = run_on(py, view.as_slice(), |bytes| {
        image::sniff(bytes, max_side).map(|header| (header, hash::sha256(bytes)))
    })
    .map_err(image_error)?;
    Ok(ImageInfo {
        format: header.format.as_str(),
        width: header.width,
        height: header.height,
        sha256: PyBytes::new(py, &digest).unbind(),
    })
}

fn canonical_error(err: CanonicalError) -> PyErr {
    PyValueError::new_err(err.to_string())
}

/// The UTF-8 bytes of JSON text given as `str` or bytes-like.
fn json_text(data: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(text) = data.cast::<PyString>() {
        let text = text.to_str().map_err(|_| {
            PyValueError::new_err("JSON text is not valid Unicode (it contains a lone surrogate)")
        })?;
        return Ok(text.as_bytes().to_vec());
    }
    Ok(Bytes::from_object(data)?.as_slice().to_vec())
}

/// The RFC 8785 canonical form of JSON text.
#[pyfunction]
pub fn canonical_json(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<String> {
    let text = json_text(data)?;
    run_on(py, &text, canonical::canonicalize).map_err(canonical_error)
}

/// SHA-256 of the RFC 8785 canonical form of JSON text.
#[pyfunction]
pub fn canonical_json_sha256<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let text = json_text(data)?;
    let digest = run_on(py, &text, |bytes| {
        canonical::canonicalize(bytes).map(|c| hash::sha256(c.as_bytes()))
    })
    .map_err(canonical_error)?;
    Ok(PyBytes::new(py, &digest))
}

/// One rate-limit decision.
#[pyclass(frozen, get_all, module = "gateway._native")]
pub struct Decision {
    /// Whether the request passes.
    allowed: bool,
    /// How many more requests of cost 1 would pass now.
    remaining: u64,
    /// Seconds until the same request would pass; `-1.0` when allowed.
    retry_after_s: f64,
    /// Seconds until the key is back to its full burst.
    reset_after_s: f64,
}

#[pymethods]
impl Decision {
    fn __repr__(&self) -> String {
        format!(
            "Decision(allowed={}, remaining={}, retry_after_s={}, reset_after_s={})",
            if self.allowed { "True" } else { "False" },
            self.remaining,
            self.retry_after_s,
            self.reset_after_s
        )
    }
}

impl From<CoreDecision> for Decision {
    fn from(d: CoreDecision) -> Self {
        Decision {
            allowed: d.allowed,
            remaining: d.remaining,
            retry_after_s: d.retry_after_ns.map_or(-1.0, |ns| ns as f64 / 1e9),
            reset_after_s: d.reset_after_ns as f64 / 1e9,
        }
    }
}

fn limit_error(err: LimitError) -> PyErr {
    PyValueError::new_err(err.to_string())
}

/// `(key, rate, period_s, burst)` tuples as keyed limits; a key may appear once.
fn limits_of(limits: &[(String, f64, f64, i64)]) -> PyResult<Vec<(&str, Limit)>> {
    let mut items = Vec::with_capacity(limits.len());
    for (key, rate, period_s, burst) in limits {
        if items.iter().any(|(k, _): &(&str, Limit)| k == key) {
            return Err(PyValueError::new_err(format!(
                "key {key:?} appears twice in one call"
            )));
        }
        let limit = Limit::per_period(*rate, *period_s, *burst).map_err(limit_error)?;
        items.push((key.as_str(), limit));
    }
    Ok(items)
}

fn cost_of(cost: i64) -> PyResult<u64> {
    u64::try_from(cost).map_err(|_| PyValueError::new_err("cost must be 0 or more"))
}

/// Nanoseconds on the clock `time.monotonic_ns()` reads (CLOCK_MONOTONIC).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

fn now_or(now_ns: Option<u64>) -> u64 {
    now_ns.unwrap_or_else(monotonic_ns)
}

/// An in-process keyed GCRA limiter: thread-safe, sharded, bounded memory.
#[pyclass(frozen, module = "gateway._native")]
pub struct GcraLimiter {
    inner: KeyedLimiter,
}

#[pymethods]
impl GcraLimiter {
    #[new]
    fn new() -> Self {
        GcraLimiter {
            inner: KeyedLimiter::new(),
        }
    }

    /// Decides one request of `cost` against `rate` per `period_s` with `burst` for `key`.
    #[pyo3(signature = (key, rate, period_s, burst, cost = 1, now_ns = None))]
    fn check(
        &self,
        key: &str,
        rate: f64,
        period_s: f64,
        burst: i64,
        cost: i64,
        now_ns: Option<u64>,
    ) -> PyResult<Decision> {
        let limit = Limit::per_period(rate, period_s, burst).map_err(limit_error)?;
        let cost = cost_of(cost)?;
        Ok(self.inner.check(key, &limit, cost, now_or(now_ns)).into())
    }

    /// Decides one request against several `(key, rate, period_s, burst)` limits at once; a
    /// denial by any consumes from none.
    #[pyo3(signature = (limits, cost = 1, now_ns = None))]
    fn check_all(
        &self,
        limits: Vec<(String, f64, f64, i64)>,
        cost: i64,
        now_ns: Option<u64>,
    ) -> PyResult<Vec<Decision>> {
        let items = limits_of(&limits)?;
        let cost = cost_of(cost)?;
        let decisions = self.inner.check_all(&items, cost, now_or(now_ns));
        Ok(decisions.into_iter().map(Decision::from).collect())
    }

    /// What `check_all` would answer, changing nothing (the read side of a deny cache).
    #[pyo3(signature = (limits, cost = 1, now_ns = None))]
    fn peek_all(
        &self,
        limits: Vec<(String, f64, f64, i64)>,
        cost: i64,
        now_ns: Option<u64>,
    ) -> PyResult<Vec<Decision>> {
        let items = limits_of(&limits)?;
        let cost = cost_of(cost)?;
        let decisions = self.inner.peek_all(&items, cost, now_or(now_ns));
        Ok(decisions.into_iter().map(Decision::from).collect())
    }

    /// Records that `key`'s TAT is at least `tat_ns` (learned from an authoritative store).
    #[pyo3(signature = (key, tat_ns, now_ns = None))]
    fn raise_tat(&self, key: &str, tat_ns: u64, now_ns: Option<u64>) {
        self.inner.raise_tat(key, tat_ns, now_or(now_ns));
    }

    /// Drops every key whose state has expired.
    #[pyo3(signature = (now_ns = None))]
    fn sweep(&self, now_ns: Option<u64>) {
        self.inner.sweep(now_or(now_ns));
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }
}

/// The clock `GcraLimiter` uses when `now_ns` is not given (same as `time.monotonic_ns()`).
#[pyfunction(name = "monotonic_ns")]
pub fn py_monotonic_ns() -> u64 {
    monotonic_ns()
}
