//! The small shell programs maxions runs inside a sandbox: the exec wrapper, the root reaper, the
//! end-of-step kill, the start-up preparation and the file copy. Each is plain POSIX `sh` (dash,
//! busybox, bash) so that any image works; the ones that must work under a fork bomb use only
//! shell builtins.

/// Tells maxions the exec's pid on the first line of stderr (docker makes every exec a session and
/// process-group leader, so this is also the group to kill), raises the soft open-files limit to
/// the hard one (builtins only: `read`, `ulimit`), then becomes the command.
pub const WRAPPER: &str = r#"echo "$$" >&2 && { while read -r a b c d e f; do [ "$a $b $c" = "Max open files" ] && { ulimit -n "$e"; break; }; done 2>/dev/null </proc/self/limits; exec "$@"; }"#;

/// The container's main process, run as uid 0 with no capability but `KILL`: reads orders from
/// its stdin, which maxions writes to through an attach. `<pgid>` kills a process group;
/// `u<uid>` sweeps every process of that (non-zero) uid, stopping them all before killing, so
/// that a fork bomb cannot refill the slots it frees. Builtins only (`read`, `kill`, `[`, globs):
/// it needs no new process when a fork bomb holds every slot, where a `docker exec` fails.
pub const REAPER: &str = r#"sweep() {
  r=0
  while [ "$r" -lt 50 ]; do
    r=$((r + 1)); found=0
    for sig in STOP KILL; do
      for s in /proc/[0-9]*/status; do
        u=
        while read -r k a b; do
          if [ "$k" = Uid: ]; then u=$a; break; fi
        done 2>/dev/null <"$s"
        [ "$u" = "$1" ] || continue
        p=${s%/status}
        kill "-$sig" "${p#/proc/}" 2>/dev/null && found=1
      done
    done
    [ "$found" = 0 ] && return
  done
}
while read -r g; do
  case "$g" in
    u|u0|u*[!0-9]*) ;;
    u*) sweep "${g#u}" ;;
    ''|*[!0-9]*) ;;
    *) kill -9 "-$g" 2>/dev/null ;;
  esac
done"#;

/// Run as the sandbox's user: `kill(-1, SIGKILL)` signals every process that user may signal
/// except the caller, and the kernel does it in one pass that a fork cannot slip through. Loops
/// until no live process of the user is left (zombies are dead already), then prints how many
/// the first look found. Exit 3: some survived every round.
pub const END_STEP: &str = r#"n=-1 r=0
while :; do
  left=0
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = "$$" ] && continue
    kill -0 "$p" 2>/dev/null || continue
    read -r s 2>/dev/null <"/proc/$p/stat" || continue
    s=${s##*) }
    case "$s" in Z*) continue ;; esac
    left=$((left + 1))
  done
  [ "$n" -lt 0 ] && n=$left
  [ "$left" = 0 ] && break
  r=$((r + 1))
  [ "$r" -gt 40 ] && exit 3
  kill -9 -1 2>/dev/null
  [ "$r" -gt 1 ] && sleep 0.05
done
echo "$n""#;

/// Run by maxions' own user at start: makes the private directory (`$0`, which must not exist)
/// and prints the numeric uid of the image's user (`$1`, a name or a number).
pub const PREPARE: &str = r#"mkdir -m 0711 -- "$0" || exit 1
case "$1" in ''|*[!0-9]*) id -u -- "$1" ;; *) echo "$1" ;; esac"#;

/// Copies stdin to `$0` with mode `$1`: makes the parent directories, removes what is there
/// (a planted symbolic link is unlinked, not followed), creates the file exclusively (`set -C`
/// opens with `O_EXCL`) and sets its mode through the open descriptor, never through the name.
pub const COPY_IN: &str = r#"case "$0" in /*) ;; *) echo "not an absolute path" >&2; exit 2 ;; esac
d=${0%/*}
if [ -n "$d" ]; then mkdir -p -- "$d" || exit 1; fi
rm -f -- "$0" || exit 1
set -C
exec 3>"$0" || exit 1
chmod -- "$1" /proc/self/fd/3 || exit 1
exec cat >&3"#;

/// Runs `du` on the workspace: its size in KiB, and whether some directory could not be read
/// (a file vanishing during the walk, as builds do all the time, is not that).
pub const DU: [&str; 3] = ["du", "-sxk", "/workspace"];

/// What one `du` run said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskUse {
    /// Bytes counted; `None` when `du` printed no total.
    pub bytes: Option<u64>,
    /// Some directory was unreadable, so the total may be short.
    pub unreadable: bool,
}

/// Reads `du -sxk` output (`<KiB>\t<path>`) and its stderr (`LC_ALL=C`).
#[must_use]
pub fn disk_use(stdout: &[u8], stderr: &[u8]) -> DiskUse {
    let bytes = std::str::from_utf8(stdout)
        .ok()
        .and_then(|text| text.lines().last())
        .and_then(|line| line.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib.saturating_mul(1024));
    let unreadable = String::from_utf8_lossy(stderr)
        .lines()
        .any(|line| !line.ends_with("No such file or directory"));
    DiskUse { bytes, unreadable }
}

/// The count [`END_STEP`] printed.
#[must_use]
pub fn killed(stdout: &[u8]) -> Option<u32> {
    std::str::from_utf8(stdout).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn du_output_gives_bytes_and_tells_unreadable_from_vanished() {
        assert_eq!(
            disk_use(b"2048\t/workspace\n", b""),
            DiskUse {
                bytes: Some(2 << 20),
                unreadable: false
            }
        );
        let vanished = b"du: cannot access '/workspace/target/x.o': No such file or directory\n";
        assert!(!disk_use(b"4\t/workspace\n", vanished).unreadable);
        let denied = b"du: cannot read directory '/workspace/hide': Permission denied\n";
        assert!(disk_use(b"4\t/workspace\n", denied).unreadable);
        assert_eq!(disk_use(b"", b"").bytes, None);
        assert_eq!(disk_use(b"x\t/workspace\n", b"").bytes, None);
    }

    #[test]
    fn the_kill_count_is_one_number() {
        assert_eq!(killed(b"3\n"), Some(3));
        assert_eq!(killed(b""), None);
        assert_eq!(killed(b"-1\n"), None);
    }
}
