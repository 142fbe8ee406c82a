//! Address helpers. Kernel context fields hold IPv4/IPv6 addresses as `u32`s in
//! network byte order; their native-endian bytes are the address octets.

use ambit_ebpf_common::v4_mapped;

/// The 16-byte form (v4-mapped) of an IPv4 address field.
#[inline(always)]
pub fn from_ip4(ip: u32) -> [u8; 16] {
    v4_mapped(ip.to_ne_bytes())
}

/// The 16 bytes of an IPv6 address field.
#[inline(always)]
pub fn from_ip6(ip: [u32; 4]) -> [u8; 16] {
    let (a, b, c, d) = (
        ip[0].to_ne_bytes(),
        ip[1].to_ne_bytes(),
        ip[2].to_ne_bytes(),
        ip[3].to_ne_bytes(),
    );
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// An IPv6 address field from 16 bytes.
#[inline(always)]
pub fn to_ip6(addr: &[u8; 16]) -> [u32; 4] {
    let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

/// Whether a 16-byte address is v4-mapped (`::ffff:a.b.c.d`).
#[inline(always)]
pub fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff
}

/// Loopback (`127.0.0.0/8`, `::1`) or unspecified (`0.0.0.0`, `::`): local
/// destinations that never leave the pod.
#[inline(always)]
pub fn is_local(addr: &[u8; 16]) -> bool {
    if is_v4_mapped(addr) {
        return addr[12] == 127 || addr[12..] == [0; 4];
    }
    addr[..15] == [0; 15] && (addr[15] == 1 || addr[15] == 0)
}

/// A port field holding a network-order port in its low 16 bits (sock_addr).
#[inline(always)]
pub fn port_from_be_low(field: u32) -> u16 {
    u16::from_be(field as u16)
}

/// A port field holding a network-order port in its high 16 bits (sock_ops,
/// sk_msg `remote_port`).
#[inline(always)]
pub fn port_from_be_high(field: u32) -> u16 {
    u16::from_be((field >> 16) as u16)
}

/// Reads a context field exactly once, at its own offset.
///
/// The verifier only accepts context loads at a constant offset from the context
/// pointer. When two branches read different fields into one variable, LLVM
/// may merge the loads into one through a computed pointer, which the verifier
/// rejects ("dereference of modified ctx ptr"); volatile reads are never merged.
#[inline(always)]
pub fn ctx_read<T: Copy>(field: *const T) -> T {
    // SAFETY: callers pass the address of a field of the live context.
    unsafe { core::ptr::read_volatile(field) }
}

/// Reads an IPv6 context field. A plain copy: LLVM emits four loads at constant
/// offsets from the context register, which is what the verifier needs; forming
/// a pointer to the field and indexing it would load through a modified context
/// pointer instead.
#[inline(always)]
pub fn ctx_read_ip6(field: *const [u32; 4]) -> [u8; 16] {
    // SAFETY: callers pass the address of a field of the live context.
    from_ip6(unsafe { *field })
}

/// Writes an IPv6 context field word by word, each store at its own constant
/// offset (a whole-array store goes through a computed context pointer, which
/// the verifier rejects).
#[inline(always)]
pub fn ctx_write_ip6(ctx: *mut aya_ebpf::bindings::bpf_sock_addr, ip: [u32; 4]) {
    // SAFETY (all writes): `ctx` is the live bpf_sock_addr of an IPv6 hook, whose
    // user_ip6 words are writable.
    unsafe {
        core::ptr::write_volatile(&raw mut (*ctx).user_ip6[0], ip[0]);
        core::ptr::write_volatile(&raw mut (*ctx).user_ip6[1], ip[1]);
        core::ptr::write_volatile(&raw mut (*ctx).user_ip6[2], ip[2]);
        core::ptr::write_volatile(&raw mut (*ctx).user_ip6[3], ip[3]);
    }
}
