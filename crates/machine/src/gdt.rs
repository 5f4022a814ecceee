//! The boot GDT and the segment registers built from it.

use kvm_bindings::kvm_segment;

/// A GDT entry from its flags (access byte and flags nibble, as `0xF0AA`), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The GDT for booting a 64-bit kernel: null, 64-bit code, data, TSS.
pub const GDT_LONG_MODE: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// The GDT for a PVH entry (32-bit protected mode, flat): null, 32-bit code, data, TSS.
pub const GDT_PROTECTED_MODE: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),
];

/// The KVM segment register for GDT entry `index` holding `entry`.
pub fn segment(index: u8, entry: u64) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_code_segment() {
        let cs = segment(1, GDT_LONG_MODE[1]);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.present, cs.s, cs.type_),
            (8, 1, 0, 1, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
    }

    #[test]
    fn protected_mode_segments() {
        let cs = segment(1, GDT_PROTECTED_MODE[1]);
        assert_eq!((cs.l, cs.db, cs.g), (0, 1, 1));
        let tss = segment(3, GDT_PROTECTED_MODE[3]);
        assert_eq!(
            (tss.limit, tss.type_, tss.s, tss.selector),
            (0x67, 0xb, 0, 0x18)
        );
        let null = segment(0, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn entry_encoding_matches_the_sdm() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }
}
