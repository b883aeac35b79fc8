/**
 * What the page remembers between visits, in localStorage: the nickname,
 * the rooms each nickname is in, and per room the highest seq already
 * shown. The broker's durable membership is the real cursor; the shown seq
 * only keeps a line that the broker delivers again (an ack lost in a
 * crash) from appearing twice.
 */

const PREFIX = "roomq-chat:";

/** localStorage, or a memory map where storage is refused (private modes, sandboxed frames). */
function storage(): Pick<Storage, "getItem" | "setItem" | "removeItem"> {
  try {
    const s = globalThis.localStorage;
    s.getItem(PREFIX);
    return s;
  } catch {
    const m = new Map<string, string>();
    return {
      getItem: (k) => m.get(k) ?? null,
      setItem: (k, v) => void m.set(k, v),
      removeItem: (k) => void m.delete(k),
    };
  }
}

const store = storage();

/** The client id of a nickname: the same nickname is the same durable identity. */
export function clientIdOf(nickname: string): string {
  return `chat-${nickname}`;
}

export function savedNickname(): string {
  return store.getItem(`${PREFIX}nickname`) ?? "";
}

export function saveNickname(nickname: string): void {
  if (nickname === "") store.removeItem(`${PREFIX}nickname`);
  else store.setItem(`${PREFIX}nickname`, nickname);
}

/** The rooms this nickname is in (default: general). */
export function savedRooms(nickname: string): string[] {
  const raw = store.getItem(`${PREFIX}rooms:${nickname}`);
  if (raw === null) return ["general"];
  try {
    const v: unknown = JSON.parse(raw);
    if (Array.isArray(v)) return v.filter((r): r is string => typeof r === "string" && r !== "");
  } catch {
    // A damaged entry: start again from the default.
  }
  return ["general"];
}

export function saveRooms(nickname: string, rooms: string[]): void {
  store.setItem(`${PREFIX}rooms:${nickname}`, JSON.stringify(rooms));
}

/** The highest seq of `room` this nickname was shown (0: none). */
export function shownSeq(nickname: string, room: string): number {
  const n = Number(store.getItem(`${PREFIX}shown:${nickname}:${room}`) ?? "0");
  return Number.isSafeInteger(n) && n > 0 ? n : 0;
}

export function saveShownSeq(nickname: string, room: string, seq: number): void {
  if (seq <= 0) store.removeItem(`${PREFIX}shown:${nickname}:${room}`);
  else store.setItem(`${PREFIX}shown:${nickname}:${room}`, String(seq));
}
