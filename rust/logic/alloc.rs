// SPDX-License-Identifier: GPL-2.0

//! Allocator bookkeeping: size classes, page descriptors' encoding, object
//! validation and the per-CPU cache watermarks.
//!
//! Objects of a size class are carved from whole pages of the heap. Every
//! page has a descriptor *outside* the heap saying what the page holds, and
//! for class pages two bitmaps: which objects are free, and which free
//! objects are on the class's global list (linked through the objects
//! themselves). A free is accepted only for an allocated object that starts
//! exactly at an object boundary of a class page (or at the head of a large
//! allocation); a link read from the heap is followed only if it names a
//! free object of the same class that is marked as on the global list. So
//! nothing the program writes in its heap can make the allocator touch
//! memory outside it or hand out an object twice.

use super::geometry::PAGE_SIZE;

/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = PAGE_SIZE.trailing_zeros();

/// Object sizes of the size classes.
pub const CLASS_SIZES: [u32; NR_CLASSES] = [16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096];
/// Number of size classes.
pub const NR_CLASSES: usize = 11;
/// Most objects a page holds (class 16).
pub const MAX_OBJS_PER_PAGE: usize = (PAGE_SIZE / 16) as usize;
/// 64-bit words of one object bitmap.
pub const BITMAP_WORDS: usize = MAX_OBJS_PER_PAGE / 64;

/// Per-CPU cache: above `HIGH` objects, `SPILL` go back to the global list.
pub const HIGH: usize = 512;
/// Per-CPU cache: below `LOW` objects, an allocation first refills.
pub const LOW: usize = 64;
/// Objects moved from the global list per refill.
pub const REFILL: usize = 128;
/// Objects moved to the global list per spill.
pub const SPILL: usize = 256;
/// Capacity of one class's per-CPU cache: above `HIGH`, room for the frees
/// of nested sections (NMI, tracing programs inside the allocator), which
/// only try the global list's lock and may have to keep objects cached.
pub const CACHE_CAP: usize = HIGH + 64;

// A spill leaves the cache below HIGH again.
const _: () = assert!(CACHE_CAP - SPILL < HIGH);

/// Largest allocation in pages (16 MiB): bounds the interrupts-off work of
/// one large allocation or free.
pub const MAX_LARGE_PAGES: u64 = 4096;

/// Smallest class holding `size` bytes; `None` for 0 or above 4096 (whole
/// pages).
pub fn class_of(size: u64) -> Option<usize> {
    if size == 0 {
        return None;
    }
    CLASS_SIZES.iter().position(|&c| u64::from(c) >= size)
}

/// Object size of class `class`.
pub fn class_size(class: usize) -> u64 {
    CLASS_SIZES.get(class).map_or(PAGE_SIZE, |&c| u64::from(c))
}

/// Objects per page of each class (a table: a division is slow, and this
/// is on every allocation and free).
const OBJS_PER_PAGE: [u16; NR_CLASSES] = {
    let mut t = [0u16; NR_CLASSES];
    let mut i = 0;
    while i < NR_CLASSES {
        t[i] = (PAGE_SIZE / CLASS_SIZES[i] as u64) as u16;
        i += 1;
    }
    t
};

/// Objects per page of class `class`.
pub fn objs_per_page(class: usize) -> usize {
    OBJS_PER_PAGE.get(class).map_or(1, |&n| usize::from(n))
}

/// Pages of a large allocation of `size` bytes (> 4096), if at most
/// [`MAX_LARGE_PAGES`].
pub fn large_pages(size: u64) -> Option<u64> {
    let n = size.div_ceil(PAGE_SIZE);
    (n > 0 && n <= MAX_LARGE_PAGES).then_some(n)
}

/// What a heap page holds; stored in its descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// Not backed by memory.
    Unpopulated,
    /// Populated, not yet handed to the allocator.
    Reserve,
    /// Populated by a user-space fault; never used by the allocator.
    User,
    /// Never used by the allocator (page 0: offset 0 is NULL).
    System,
    /// Carved into objects of a size class.
    Class(u8),
    /// First page of a large allocation.
    LargeHead,
    /// Further page of a large allocation.
    LargeTail,
    /// Free, on the page pool's free-page stack (linked through the
    /// descriptors, outside the heap).
    FreeStack,
    /// Free, in one of the page pool's free runs.
    FreeRun,
}

impl PageKind {
    /// Encoding in the descriptor's state word.
    pub fn encode(self) -> u32 {
        match self {
            PageKind::Unpopulated => 0,
            PageKind::Reserve => 1,
            PageKind::User => 2,
            PageKind::System => 3,
            PageKind::LargeHead => 4,
            PageKind::LargeTail => 5,
            PageKind::FreeStack => 6,
            PageKind::FreeRun => 7,
            PageKind::Class(c) => 0x100 | u32::from(c),
        }
    }

    /// Decodes a state word; unknown values read as `Unpopulated`'s
    /// opposite, `System` (never touched by the allocator).
    #[inline]
    pub fn decode(v: u32) -> PageKind {
        match v {
            0 => PageKind::Unpopulated,
            1 => PageKind::Reserve,
            2 => PageKind::User,
            4 => PageKind::LargeHead,
            5 => PageKind::LargeTail,
            6 => PageKind::FreeStack,
            7 => PageKind::FreeRun,
            v if v & !0xff == 0x100 && ((v & 0xff) as usize) < NR_CLASSES => {
                PageKind::Class((v & 0xff) as u8)
            }
            _ => PageKind::System,
        }
    }

    /// Whether the page is backed by memory.
    pub fn populated(self) -> bool {
        self != PageKind::Unpopulated
    }

    /// Whether the page is free in the page pool.
    pub fn is_free(self) -> bool {
        matches!(self, PageKind::FreeStack | PageKind::FreeRun)
    }
}

/// Why a free (or a link read from the heap) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Outside the heap, or in a page the allocator did not hand out.
    Foreign,
    /// Inside an allocator page but not at the start of an object.
    Misaligned,
    /// The object is already free.
    Double,
}

/// Position of an object: page index and object index in the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjRef {
    /// Page index in the heap.
    pub page: u64,
    /// Object index within the page.
    pub index: usize,
}

impl ObjRef {
    /// Bitmap word and bit of the object.
    pub fn bit(self) -> (usize, u64) {
        (self.index / 64, 1u64 << (self.index % 64))
    }

    /// Heap offset of the object of class `class`. Page indices are below
    /// 2^26 (256 GiB heaps) and object indices below 256, so the arithmetic
    /// cannot wrap for any `ObjRef` the allocator makes.
    pub fn offset(self, class: usize) -> u64 {
        (self.page << PAGE_SHIFT).wrapping_add((self.index as u64).wrapping_mul(class_size(class)))
    }
}

/// Heap offset of user address `uaddr` in a heap of `size` bytes mapped at
/// `user_start`, if inside.
pub fn user_offset(uaddr: u64, user_start: u64, size: u64) -> Option<u64> {
    let off = uaddr.checked_sub(user_start)?;
    (off < size).then_some(off)
}

/// `ceil(2^32 / size)` per class: `(x * MAGIC) >> 32 == x / size` for every
/// `x < 4096` (checked exhaustively by the tests), which spares the
/// allocator's hot paths a division.
const MAGIC: [u64; NR_CLASSES] = {
    let mut m = [0u64; NR_CLASSES];
    let mut i = 0;
    while i < NR_CLASSES {
        let size = CLASS_SIZES[i] as u64;
        m[i] = (1u64 << 32).div_ceil(size);
        i += 1;
    }
    m
};

/// `x / class_size(class)` for `x < PAGE_SIZE` (then `x * m < 2^40`).
fn div_class(x: u64, class: usize) -> u64 {
    match MAGIC.get(class) {
        Some(m) => (x & (PAGE_SIZE - 1)).wrapping_mul(*m) >> 32,
        None => x / PAGE_SIZE,
    }
}

/// Locates the object at heap offset `off` in a page of class `class`.
pub fn locate(off: u64, class: usize) -> Result<ObjRef, Refusal> {
    let page = off >> PAGE_SHIFT;
    let in_page = off & (PAGE_SIZE - 1);
    let size = class_size(class);
    let index = div_class(in_page, class);
    // `index * size <= in_page < PAGE_SIZE`.
    if index.wrapping_mul(size) != in_page {
        return Err(Refusal::Misaligned);
    }
    let index = index as usize;
    if index >= objs_per_page(class) {
        // The tail of a 96- or 192-byte class page holds no object.
        return Err(Refusal::Misaligned);
    }
    Ok(ObjRef { page, index })
}

/// Bitmap words with the first `n` objects set.
pub fn full_bitmap(n: usize) -> [u64; BITMAP_WORDS] {
    let mut words = [0u64; BITMAP_WORDS];
    for (i, w) in words.iter_mut().enumerate() {
        let lo = i * 64;
        if n >= lo + 64 {
            *w = u64::MAX;
        } else if n > lo {
            *w = (1u64 << (n - lo)) - 1;
        }
    }
    words
}

/// How many objects an allocation moves from the global list into a per-CPU
/// cache holding `count` objects (0: none needed).
pub fn refill_amount(count: usize) -> usize {
    if count < LOW {
        REFILL.min(CACHE_CAP - count)
    } else {
        0
    }
}

/// How many objects a free moves from a per-CPU cache holding `count`
/// objects to the global list (0: none).
pub fn spill_amount(count: usize) -> usize {
    if count > HIGH {
        SPILL
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(class_of(0), None);
        assert_eq!(class_of(1), Some(0));
        assert_eq!(class_of(16), Some(0));
        assert_eq!(class_of(17), Some(1));
        assert_eq!(class_of(65), Some(3));
        assert_eq!(class_of(96), Some(3));
        assert_eq!(class_of(97), Some(4));
        assert_eq!(class_of(129), Some(5));
        assert_eq!(class_of(4096), Some(10));
        assert_eq!(class_of(4097), None);
        assert_eq!(objs_per_page(0), 256);
        assert_eq!(objs_per_page(3), 42);
        assert_eq!(objs_per_page(5), 21);
        assert_eq!(objs_per_page(10), 1);
        assert_eq!(large_pages(4097), Some(2));
        assert_eq!(large_pages(8192), Some(2));
        assert_eq!(large_pages(1 << 20), Some(256));
        assert_eq!(large_pages(16 << 20), Some(MAX_LARGE_PAGES));
        assert_eq!(large_pages((16 << 20) + 1), None);
        assert_eq!(large_pages(u64::MAX), None);
        assert_eq!(large_pages(0), None);
        for c in 0..NR_CLASSES {
            assert!(objs_per_page(c) <= MAX_OBJS_PER_PAGE);
            assert_eq!(class_of(class_size(c)), Some(c));
        }
    }

    #[test]
    fn page_kinds_round_trip() {
        let kinds = [
            PageKind::Unpopulated,
            PageKind::Reserve,
            PageKind::User,
            PageKind::System,
            PageKind::LargeHead,
            PageKind::LargeTail,
            PageKind::FreeStack,
            PageKind::FreeRun,
            PageKind::Class(0),
            PageKind::Class(10),
        ];
        for k in kinds {
            assert_eq!(PageKind::decode(k.encode()), k);
        }
        // Garbage never decodes to something the allocator would use.
        assert_eq!(PageKind::decode(0x10b), PageKind::System);
        assert_eq!(PageKind::decode(0xdead_beef), PageKind::System);
        assert!(!PageKind::Unpopulated.populated());
        assert!(PageKind::User.populated());
        assert!(PageKind::FreeRun.is_free() && PageKind::FreeStack.is_free());
        assert!(!PageKind::Reserve.is_free() && !PageKind::LargeHead.is_free());
    }

    #[test]
    fn locate_objects() {
        assert_eq!(locate(4096 * 3 + 32, 0), Ok(ObjRef { page: 3, index: 2 }));
        assert_eq!(locate(4096 * 3 + 33, 0), Err(Refusal::Misaligned));
        assert_eq!(locate(4096 + 96 * 41, 3), Ok(ObjRef { page: 1, index: 41 }));
        // 42 * 96 = 4032: past the last 96-byte object of the page.
        assert_eq!(locate(4096 + 96 * 42, 3), Err(Refusal::Misaligned));
        assert_eq!(locate(8192, 10), Ok(ObjRef { page: 2, index: 0 }));
        assert_eq!(locate(8192 + 16, 10), Err(Refusal::Misaligned));
        let o = ObjRef { page: 5, index: 130 };
        assert_eq!(o.bit(), (2, 1 << 2));
        assert_eq!(o.offset(0), 5 * 4096 + 130 * 16);
    }

    #[test]
    fn division_by_magic_is_exact() {
        for c in 0..NR_CLASSES {
            for x in 0..PAGE_SIZE {
                assert_eq!(div_class(x, c), x / class_size(c), "class {c}, x {x}");
            }
        }
    }

    #[test]
    fn user_offsets() {
        let start = 0x7f00_0000_0000;
        assert_eq!(user_offset(start, start, 1 << 16), Some(0));
        assert_eq!(user_offset(start + 0xffff, start, 1 << 16), Some(0xffff));
        assert_eq!(user_offset(start + 0x10000, start, 1 << 16), None);
        assert_eq!(user_offset(start - 1, start, 1 << 16), None);
        assert_eq!(user_offset(0xffff_8880_0000_0000, start, 1 << 16), None);
    }

    #[test]
    fn bitmaps() {
        assert_eq!(full_bitmap(0), [0; BITMAP_WORDS]);
        assert_eq!(full_bitmap(1), [1, 0, 0, 0]);
        assert_eq!(full_bitmap(42), [(1 << 42) - 1, 0, 0, 0]);
        assert_eq!(full_bitmap(64), [u64::MAX, 0, 0, 0]);
        assert_eq!(full_bitmap(256), [u64::MAX; 4]);
        assert_eq!(full_bitmap(130), [u64::MAX, u64::MAX, 3, 0]);
    }

    #[test]
    fn watermarks() {
        assert_eq!(refill_amount(0), REFILL);
        assert_eq!(refill_amount(LOW - 1), REFILL);
        assert_eq!(refill_amount(LOW), 0);
        assert_eq!(spill_amount(HIGH), 0);
        assert_eq!(spill_amount(HIGH + 1), SPILL);
        // A refill never overflows the cache.
        for c in 0..CACHE_CAP {
            assert!(c + refill_amount(c) <= CACHE_CAP);
        }
    }
}
