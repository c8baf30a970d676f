// SPDX-License-Identifier: GPL-2.0

//! Heap geometry: which sizes are valid and where a heap sits in its
//! reserved kernel address range.
//!
//! A heap is `size` bytes, a power of two from 64 KiB to 256 GiB. Its kernel
//! view starts at an address aligned to `size` with an unmapped guard zone
//! below ([`GUARD_LO`]) and above ([`GUARD_HI`]): a guarded pointer is in
//! `[0, size)` and a BPF access adds a signed 16-bit offset and at most 8
//! bytes, so every guarded access lands in `[base - 32 KiB, base + size +
//! 32 KiB + 8)`. The reservation is twice the size plus the guards so that an
//! aligned base always fits.

/// Page size of the heap (x86-64).
pub const PAGE_SIZE: u64 = 4096;
/// Smallest heap.
pub const MIN_SIZE: u64 = 1 << 16;
/// Largest heap.
pub const MAX_SIZE: u64 = 1 << 38;
/// Unmapped zone below the heap: covers offsets down to -32768.
pub const GUARD_LO: u64 = 32 << 10;
/// Unmapped zone above the heap: covers offsets up to +32767 plus the access
/// width, rounded up to whole pages.
pub const GUARD_HI: u64 = (32 << 10) + PAGE_SIZE;

/// Why a heap size or address hint is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeometryError {
    /// Size is not a power of two.
    NotPowerOfTwo,
    /// Size is below [`MIN_SIZE`].
    TooSmall,
    /// Size is above [`MAX_SIZE`].
    TooLarge,
    /// The user address hint (`map_extra`) is not aligned to the size.
    MisalignedHint,
    /// The user address hint does not fit a canonical lower-half address.
    HintOutOfRange,
}

impl GeometryError {
    /// Kernel error code for the error (negative errno).
    pub fn errno(self) -> i32 {
        const EINVAL: i32 = 22;
        const E2BIG: i32 = 7;
        const ERANGE: i32 = 34;
        match self {
            GeometryError::TooLarge => -E2BIG,
            GeometryError::HintOutOfRange => -ERANGE,
            _ => -EINVAL,
        }
    }

    /// Human-readable reason.
    pub fn reason(self) -> &'static str {
        match self {
            GeometryError::NotPowerOfTwo => "size is not a power of two",
            GeometryError::TooSmall => "size is below 64 KiB",
            GeometryError::TooLarge => "size is above 256 GiB",
            GeometryError::MisalignedHint => "map_extra is not aligned to the heap size",
            GeometryError::HintOutOfRange => "map_extra is not a user address",
        }
    }
}

/// Validates a heap of `pages` pages with user address hint `map_extra`
/// (0: none) and returns its size in bytes.
pub fn heap_size(pages: u32, map_extra: u64) -> Result<u64, GeometryError> {
    let size = u64::from(pages) * PAGE_SIZE;
    if size < MIN_SIZE {
        return Err(GeometryError::TooSmall);
    }
    if size > MAX_SIZE {
        return Err(GeometryError::TooLarge);
    }
    if !size.is_power_of_two() {
        return Err(GeometryError::NotPowerOfTwo);
    }
    if map_extra != 0 {
        if map_extra & (size - 1) != 0 {
            return Err(GeometryError::MisalignedHint);
        }
        // x86-64 user space ends at 2^47.
        if map_extra.checked_add(size).is_none_or(|end| end > 1 << 47) {
            return Err(GeometryError::HintOutOfRange);
        }
    }
    Ok(size)
}

/// Bytes of kernel address space to reserve for a heap of `size` bytes.
pub fn reservation_len(size: u64) -> u64 {
    2 * size + GUARD_LO + GUARD_HI
}

/// Kernel address of heap offset 0 inside a reservation starting at `start`:
/// the first address aligned to `size` with [`GUARD_LO`] of reserved space
/// below it. `None` if the reservation cannot hold it (never for a
/// reservation of [`reservation_len`] bytes).
pub fn place(start: u64, size: u64) -> Option<u64> {
    if !size.is_power_of_two() {
        return None;
    }
    let base = start.checked_add(GUARD_LO)?.checked_add(size - 1)? & !(size - 1);
    let end = base.checked_add(size)?.checked_add(GUARD_HI)?;
    (end <= start.checked_add(reservation_len(size))?).then_some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(heap_size(16, 0), Ok(64 << 10));
        assert_eq!(heap_size(1 << 26, 0), Ok(256 << 30));
        assert_eq!(heap_size(15, 0), Err(GeometryError::TooSmall));
        assert_eq!(heap_size(1, 0), Err(GeometryError::TooSmall));
        assert_eq!(heap_size((1 << 26) + 1, 0), Err(GeometryError::TooLarge));
        assert_eq!(heap_size(1 << 27, 0), Err(GeometryError::TooLarge));
        assert_eq!(heap_size(24, 0), Err(GeometryError::NotPowerOfTwo));
        assert_eq!(heap_size(1000, 0), Err(GeometryError::NotPowerOfTwo));
        assert_eq!(heap_size(u32::MAX, 0), Err(GeometryError::TooLarge));
        assert_eq!(GeometryError::TooLarge.errno(), -7);
        assert_eq!(GeometryError::NotPowerOfTwo.errno(), -22);
    }

    #[test]
    fn hints() {
        assert_eq!(heap_size(16, 0x7f00_0000_0000), Ok(64 << 10));
        assert_eq!(heap_size(16, 0x7f00_0000_1000), Err(GeometryError::MisalignedHint));
        assert_eq!(heap_size(16, 1 << 47), Err(GeometryError::HintOutOfRange));
        assert_eq!(heap_size(1 << 26, 0x7fc0_0000_0000), Ok(256 << 30));
        assert_eq!(
            heap_size(1 << 26, 0x7fc0_0000_0000 + (256 << 30)),
            Err(GeometryError::HintOutOfRange)
        );
    }

    #[test]
    fn placement_is_aligned_with_guards() {
        for shift in 16..=38u32 {
            let size = 1u64 << shift;
            for start in [
                0xffff_c900_0000_0000u64,
                0xffff_c900_0000_1000,
                0xffff_c900_1234_5000,
                0xffff_c9ff_ffff_f000,
            ] {
                let base = place(start, size).expect("fits");
                assert_eq!(base % size, 0);
                assert!(base - start >= GUARD_LO);
                assert!(base + size + GUARD_HI <= start + reservation_len(size));
            }
        }
        assert_eq!(place(0x1000, 3 << 16), None);
    }
}
