//! The broker's CPU time, read from Linux's process accounting, so that a
//! run can report what each confirmed message cost the broker (not the
//! load generator that shares the machine).

use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat`'s `utime` and `stime`:
/// Linux reports them in `USER_HZ`, which its ABI fixes at 100.
const USER_HZ: u64 = 100;

/// User plus system CPU time of every thread of process `pid` so far, or
/// `None` when it cannot be read (another OS, the process is gone).
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_of_stat(&stat)
}

/// Parses a `/proc/<pid>/stat` line: fields 14 and 15 (`utime`, `stime`),
/// counted after the command name, which is in parentheses and may hold
/// spaces or parentheses itself.
fn cpu_of_stat(stat: &str) -> Option<Duration> {
    let (_, after) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = utime.checked_add(stime)?;
    Some(Duration::from_millis(ticks.checked_mul(1000 / USER_HZ)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_after_a_command_name_with_spaces() {
        let line = "4242 (roomqd (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    250 75 0 0 20 0 9 0 12345 1000000 500 18446744073709551615";
        assert_eq!(cpu_of_stat(line), Some(Duration::from_millis(3_250)));
        assert_eq!(cpu_of_stat("garbage"), None);
        assert_eq!(cpu_of_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let cpu = process_cpu(std::process::id()).expect("/proc/self/stat");
        assert!(cpu > Duration::ZERO, "{cpu:?}");
    }
}
