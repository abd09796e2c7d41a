//! A direct-mapped cache of a time zone's offset per hour, shared by threads.
//!
//! Converting a timestamp between UTC and a zone's local time asks the zone for its
//! offset at that instant: a search through its transitions (chrono-tz's), a tenth or
//! more of a timestamp's cast. Offsets change rarely, so the casts ([`crate::cast`]) and
//! `to_local_time` ([`crate::validate`]) ask once per hour and keep the answer here:
//! 1,024 hours, a month and a half, each in the slot of its number modulo 1,024.
//!
//! Each slot is one atomic word holding an hour and its offset together, so the
//! threads casting several objects at once read either an hour's whole entry or
//! another hour's, never a mix, and a slot overwritten by another hour just asks again.

use std::sync::atomic::{AtomicU64, Ordering};

/// Hours since the epoch (UTC or local, as the user decides) -> offset in seconds.
#[derive(Debug)]
pub(crate) struct HourSlots {
    /// The hour (40 bits) and its offset (24 bits), see [`HourSlots::pack`].
    slots: Vec<AtomicU64>,
}

impl HourSlots {
    const SLOTS: usize = 1024;
    /// An offset no zone has (a zone's is within a day): what a user stores for an hour
    /// that holds a transition, to ask the zone value by value.
    pub(crate) const MIXED: i32 = -(1 << 23);
    /// Hours this far from the epoch (62 million years) are not kept.
    pub(crate) const HOUR_LIMIT: i64 = 1 << 39;

    pub(crate) fn new() -> Self {
        // An empty slot holds an hour no timestamp reaches.
        let empty = Self::pack(-Self::HOUR_LIMIT, Self::MIXED);
        Self {
            slots: (0..Self::SLOTS).map(|_| AtomicU64::new(empty)).collect(),
        }
    }

    /// No slots: every hour is asked for again (a column without a zone never asks).
    pub(crate) fn none() -> Self {
        Self { slots: Vec::new() }
    }

    /// The offset kept for `hour`, else `ask(hour)`'s, kept for the next time.
    pub(crate) fn offset(&self, hour: i64, ask: impl FnOnce(i64) -> i32) -> i32 {
        let slot = if hour.abs() < Self::HOUR_LIMIT {
            self.slots.get(hour.rem_euclid(Self::SLOTS as i64) as usize)
        } else {
            None
        };
        let Some(slot) = slot else {
            return ask(hour);
        };
        match Self::unpack(slot.load(Ordering::Relaxed)) {
            (h, offset) if h == hour => offset,
            _ => {
                let offset = ask(hour);
                slot.store(Self::pack(hour, offset), Ordering::Relaxed);
                offset
            }
        }
    }

    fn pack(hour: i64, offset: i32) -> u64 {
        ((hour as u64) << 24) | u64::from((offset as u32) & 0x00FF_FFFF)
    }

    fn unpack(word: u64) -> (i64, i32) {
        ((word as i64) >> 24, (((word << 40) as i64) >> 40) as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_holds_its_hour_and_offset_whole() {
        let hours = [
            0,
            1,
            -1,
            474_000,
            -2_000_000,
            HourSlots::HOUR_LIMIT - 1,
            -HourSlots::HOUR_LIMIT,
        ];
        for hour in hours {
            for offset in [0, 3600, -18_000, 50_400, -43_200, 1_800, HourSlots::MIXED] {
                assert_eq!(
                    HourSlots::unpack(HourSlots::pack(hour, offset)),
                    (hour, offset),
                    "hour {hour}, offset {offset}"
                );
            }
        }
    }

    #[test]
    fn an_hour_is_asked_for_once_until_another_takes_its_slot() {
        let slots = HourSlots::new();
        let mut asked = Vec::new();
        let mut offset = |hour: i64| {
            slots.offset(hour, |h| {
                asked.push(h);
                (h % 7) as i32 * 60
            })
        };
        assert_eq!(offset(5), 300);
        assert_eq!(offset(5), 300);
        assert_eq!(offset(-3), -180);
        // 1,029 shares 5's slot: asked, and then 5 is asked again.
        assert_eq!(offset(1_029), 0);
        assert_eq!(offset(5), 300);
        // Beyond the limit nothing is kept.
        assert_eq!(
            offset(HourSlots::HOUR_LIMIT),
            (HourSlots::HOUR_LIMIT % 7) as i32 * 60
        );
        offset(HourSlots::HOUR_LIMIT);
        assert_eq!(
            asked,
            [
                5,
                -3,
                1_029,
                5,
                HourSlots::HOUR_LIMIT,
                HourSlots::HOUR_LIMIT
            ]
        );
        assert!(HourSlots::none().slots.is_empty());
    }
}
