//! The loader's only unsafe code: two calls of the C API (the interface index, the program
//! attached to an interface), each with its SAFETY comment.

#![allow(unsafe_code)]

use crate::Error;

/// The interface's index in the calling thread's network namespace.
pub(crate) fn ifindex(ifname: &str) -> Result<i32, Error> {
    let name =
        std::ffi::CString::new(ifname).map_err(|_| Error::NoInterface(ifname.to_string()))?;
    // SAFETY: `name` is a valid NUL-terminated string that lives across the call; the function
    // only reads it.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if i == 0 {
        return Err(Error::NoInterface(ifname.to_string()));
    }
    Ok(i as i32)
}

/// The id of the XDP program attached to interface `index` (0: none).
pub(crate) fn attached_id(index: i32) -> u32 {
    let mut id = 0u32;
    // SAFETY: `id` is a live u32 the call writes; the call has no other pointer argument.
    let rc = unsafe { libbpf_rs::libbpf_sys::bpf_xdp_query_id(index, 0, &mut id) };
    if rc == 0 {
        id
    } else {
        0
    }
}
