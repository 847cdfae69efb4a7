//! `gateway._native`: the ViewBait AI Gateway's native core.
//!
//! Each concern is a pure-Rust module with its own tests; `bindings` adapts them to Python and
//! this file only registers what Python sees.

pub mod canonical;
pub mod gcra;
pub mod hash;
pub mod image;
pub mod limiter;

mod bindings;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(bindings::sha256, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::sha256_many, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::inspect_image, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::canonical_json, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::canonical_json_sha256, m)?)?;
    m.add_function(wrap_pyfunction!(bindings::py_monotonic_ns, m)?)?;
    m.add_class::<bindings::ImageInfo>()?;
    m.add_class::<bindings::Decision>()?;
    m.add_class::<bindings::GcraLimiter>()?;
    m.add("ImageError", m.py().get_type::<bindings::ImageError>())?;
    m.add("MAX_JSON_DEPTH", canonical::MAX_DEPTH)?;
    m.add("DEFAULT_MAX_IMAGE_SIDE", image::DEFAULT_MAX_SIDE)?;
    Ok(())
}
