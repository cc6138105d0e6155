//! The filter's own Proxy-Wasm host calls: every status the host returns is a `Result`,
//! never a panic, and every value comes back as bytes.
//!
//! Why not `proxy_wasm::hostcalls`: in proxy-wasm 0.2.5 every one of those functions
//! panics on a status it does not expect (`status => panic!("unexpected status")`),
//! `get_map_value` and `get_map` also unwrap `String::from_utf8` on header values (one
//! request with a 0x80-0xFF byte killed the VM), and they declare the returned status as a
//! Rust enum, so a status value outside it would be undefined behaviour. Here the status is
//! read as a plain `u32`. Only the SDK's dispatcher (the exported callbacks) and its
//! allocator are used; see `adapter.rs` for the audit of those.

use std::ptr::null_mut;

/// A host status other than `Ok`, as the ABI numbers it (1 NotFound, 2 BadArgument,
/// 7 CasMismatch, 10 InternalFailure, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;

/// `proxy_log` levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum Level {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// Header maps (`proxy_get_header_map_value` and friends).
const HTTP_REQUEST_HEADERS: u32 = 0;
pub const HTTP_RESPONSE_HEADERS: u32 = 2;
/// Buffers (`proxy_get_buffer_bytes`).
pub const PLUGIN_CONFIGURATION: u32 = 7;
/// Metric types (`proxy_define_metric`).
const COUNTER: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn random_get(buf: *mut u8, buf_len: usize) -> u16;
}

fn check(status: u32) -> Result<(), Status> {
    if status == OK {
        Ok(())
    } else {
        Err(Status(status))
    }
}

/// Takes ownership of a buffer the host allocated in this VM (through the SDK's
/// `proxy_on_memory_allocate`, which hands out exactly `size` bytes).
///
/// # Safety
/// `data` must be null or point to `size` bytes from `proxy_on_memory_allocate`.
unsafe fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        // SAFETY: per the contract above, the allocation is `size` bytes, align 1.
        Some(unsafe { Vec::from_raw_parts(data, size, size) })
    }
}

/// A call that returns a host-allocated buffer: `Ok(None)` for NotFound.
fn returned_bytes(
    call: impl FnOnce(*mut *mut u8, *mut usize) -> u32,
) -> Result<Option<Vec<u8>>, Status> {
    let mut data = null_mut();
    let mut size = 0;
    match call(&mut data, &mut size) {
        // SAFETY: on Ok the host set `data`/`size` to a buffer it allocated in this VM.
        OK => Ok(unsafe { owned(data, size) }.or(Some(Vec::new()))),
        NOT_FOUND => Ok(None),
        status => Err(Status(status)),
    }
}

pub fn log(level: Level, message: &str) -> Result<(), Status> {
    // SAFETY: pointer and length of a live &str.
    check(unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) })
}

pub fn log_level() -> Result<Level, Status> {
    let mut level = 0;
    // SAFETY: `level` outlives the call.
    check(unsafe { proxy_get_log_level(&mut level) })?;
    Ok(match level {
        0 => Level::Trace,
        1 => Level::Debug,
        2 => Level::Info,
        3 => Level::Warn,
        4 => Level::Error,
        _ => Level::Critical,
    })
}

pub fn now_nanos() -> Result<u64, Status> {
    let mut nanos = 0;
    // SAFETY: `nanos` outlives the call.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) })?;
    Ok(nanos)
}

pub fn set_tick_period_ms(period: u32) -> Result<(), Status> {
    // SAFETY: plain value.
    check(unsafe { proxy_set_tick_period_milliseconds(period) })
}

pub fn buffer(buffer_type: u32) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: out-pointers valid for the call.
    returned_bytes(|data, size| unsafe {
        proxy_get_buffer_bytes(buffer_type, 0, usize::MAX, data, size)
    })
}

pub fn request_header(name: &str) -> Result<Option<Vec<u8>>, Status> {
    header(HTTP_REQUEST_HEADERS, name)
}

/// A header of `map` (the request's or the response's headers).
pub fn header(map: u32, name: &str) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: pointer and length of a live &str; out-pointers valid for the call.
    returned_bytes(|data, size| unsafe {
        proxy_get_header_map_value(map, name.as_ptr(), name.len(), data, size)
    })
}

/// All request headers in one call, serialized (see `header_pairs`), every line of a
/// repeated header included. The edge guard reads them so; the benchmark's ladder measured
/// it no cheaper than reading two headers one by one, so the mesh path does not.
pub fn request_header_pairs() -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: out-pointers valid for the call.
    returned_bytes(|data, size| unsafe {
        proxy_get_header_map_pairs(HTTP_REQUEST_HEADERS, data, size)
    })
}

pub fn replace_request_header(name: &str, value: &str) -> Result<(), Status> {
    replace_header(HTTP_REQUEST_HEADERS, name, value)
}

pub fn replace_header(map: u32, name: &str, value: &str) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live &strs.
    check(unsafe {
        proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

pub fn remove_request_header(name: &str) -> Result<(), Status> {
    remove_header(HTTP_REQUEST_HEADERS, name)
}

pub fn remove_header(map: u32, name: &str) -> Result<(), Status> {
    // SAFETY: pointer and length of a live &str.
    check(unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) })
}

/// A property by path (`["xds", "node", "metadata", "NAMESPACE"]`).
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    // The ABI's path encoding: the segments, each followed by a NUL.
    let mut encoded = Vec::with_capacity(path.iter().map(|p| p.len() + 1).sum());
    for segment in path {
        encoded.extend_from_slice(segment.as_bytes());
        encoded.push(0);
    }
    encoded_property(&encoded)
}

/// A property by its already encoded path (`b"xds\0listener_direction\0"`), for paths
/// read on every request.
pub fn encoded_property(path: &[u8]) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: pointer and length of a live slice; out-pointers valid for the call.
    returned_bytes(|data, size| unsafe {
        proxy_get_property(path.as_ptr(), path.len(), data, size)
    })
}

pub fn shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, Status> {
    let mut data = null_mut();
    let mut size = 0;
    let mut cas = 0;
    // SAFETY: pointer and length of a live &str; out-pointers valid for the call.
    match unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) }
    {
        // SAFETY: on Ok the host set `data`/`size` to a buffer it allocated in this VM.
        OK => Ok(unsafe { owned(data, size) }.map(|value| (value, cas))),
        NOT_FOUND => Ok(None),
        status => Err(Status(status)),
    }
}

/// Writes a shared-data value; `cas` 0 writes unconditionally.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live slices.
    check(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

pub fn define_counter(name: &str) -> Result<u32, Status> {
    let mut id = 0;
    // SAFETY: pointer and length of a live &str; `id` outlives the call.
    check(unsafe { proxy_define_metric(COUNTER, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), Status> {
    // SAFETY: plain values.
    check(unsafe { proxy_increment_metric(id, offset) })
}

/// Random bytes from the host (WASI `random_get`); false if it has none.
pub fn random(buf: &mut [u8]) -> bool {
    // SAFETY: pointer and length of a live, writable slice.
    unsafe { random_get(buf.as_mut_ptr(), buf.len()) == 0 }
}
