/**
 * The roomq web chat: Socket.IO's chat example, with durable delivery.
 *
 * - A nickname is a durable identity (client id `chat-<nickname>`), so each
 *   room joined is a durable membership: lines published while the page was
 *   closed, or while the broker restarted, are delivered when it comes back,
 *   in order, flagged `catchUp` by the SDK, and shown marked "(while you
 *   were away)" (see backlog.ts).
 * - The connection state at the top follows `client.status()`. The SDK
 *   retries the first connection too: a nickname entered while the broker
 *   is down connects when it comes back.
 * - A line goes to everyone in the room except its sender (`client.to(room)`,
 *   i.e. `exceptSelf`); the sender shows it at once and adds its seq when the
 *   broker confirms it.
 * - Join and leave notices come from presence; "is typing…" is a volatile
 *   emit (never stored).
 *
 * Lines are put in the page with `textContent` only: nothing a peer sends is
 * ever parsed as HTML.
 */
import {
  BrokerError,
  createClient,
  isRetryable,
  jsonCodec,
  type Client,
  type Delivery,
  type PresenceChange,
  type Room,
} from "../../src/index.js";
import { Backlog } from "./backlog.js";
import { clientIdOf, saveNickname, saveRooms, savedNickname, savedRooms, saveShownSeq, shownSeq } from "./store.js";

/** What a chat payload holds: the sender's nickname and, for a line, its text. */
interface Said {
  nick: string;
  text: string;
}

const LINE = "chat message";
const TYPING = "typing";
/** A "typing" emit is sent at most this often while someone types. */
const TYPING_EVERY_MS = 2000;
/** A peer is shown typing for this long after their last "typing". */
const TYPING_SHOWN_MS = 3500;
/** The room list is refreshed this often while connected. */
const ROOMS_EVERY_MS = 15_000;

// ---- the page's elements --------------------------------------------------

function byId<E extends HTMLElement>(id: string): E {
  const e = document.getElementById(id);
  if (!e) throw new Error(`the page has no #${id}`);
  return e as E;
}

const ui = {
  state: byId("state"),
  me: byId("me"),
  meName: byId("me-name"),
  changeNick: byId<HTMLButtonElement>("change-nick"),
  nickForm: byId<HTMLFormElement>("nick-form"),
  nickname: byId<HTMLInputElement>("nickname"),
  nickError: byId("nick-error"),
  chat: byId("chat"),
  roomList: byId<HTMLUListElement>("room-list"),
  knownRooms: byId<HTMLDataListElement>("known-rooms"),
  joinForm: byId<HTMLFormElement>("join-form"),
  roomInput: byId<HTMLInputElement>("room"),
  refreshRooms: byId<HTMLButtonElement>("refresh-rooms"),
  roomTitle: byId("room-title"),
  members: byId("members"),
  log: byId("log"),
  typing: byId("typing"),
  sendForm: byId<HTMLFormElement>("send-form"),
  message: byId<HTMLInputElement>("message"),
};

function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, ...children: Array<Node | string>): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  e.append(...children);
  return e;
}

type ConnState = "offline" | "connecting" | "connected" | "reconnecting" | "closed";

function showState(state: ConnState, text: string): void {
  ui.state.dataset["state"] = state;
  ui.state.textContent = text;
}

// ---- one room on the page -------------------------------------------------

interface RoomView {
  name: string;
  /** The membership once joined; undefined while joining or after it closed. */
  room: Room<unknown> | undefined;
  joining: boolean;
  /** Its lines; in the page while the room is the one shown. */
  list: HTMLOListElement;
  backlog: Backlog;
  /** Who is in the room: session id → nickname. */
  members: Map<string, string>;
  /** Peers typing: nickname → the timer that stops showing it. */
  typing: Map<string, ReturnType<typeof setTimeout>>;
  unread: number;
}

interface Session {
  nick: string;
  client: Client<unknown>;
  rooms: Map<string, RoomView>;
  active: string;
  roomsTimer: ReturnType<typeof setInterval> | undefined;
  lastTyping: number;
}

let session: Session | undefined;
/** The client while its first connection is tried (before `session` exists). */
let connecting: Client<unknown> | undefined;
/** Bumped when the nickname changes, so a late answer for the old one is ignored. */
let generation = 0;

function said(data: unknown): Said | undefined {
  if (typeof data !== "object" || data === null) return undefined;
  const { nick, text } = data as { nick?: unknown; text?: unknown };
  if (typeof nick !== "string") return undefined;
  return { nick: nick.slice(0, 64), text: typeof text === "string" ? text.slice(0, 4000) : "" };
}

function timeOf(ms: number): string {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function addItem(view: RoomView, item: HTMLLIElement): void {
  const stick = ui.log.scrollTop + ui.log.clientHeight >= ui.log.scrollHeight - 8;
  view.list.append(item);
  if (session?.active === view.name) {
    if (stick) ui.log.scrollTop = ui.log.scrollHeight;
  } else if (item.dataset["testid"] === "message") {
    view.unread++;
    renderRoomList();
  }
}

function lineItem(nick: string, text: string, ms: number, seq: number | undefined, own: boolean, missed: boolean): HTMLLIElement {
  const li = el(
    "li",
    { "data-testid": "message", class: `line${own ? " own" : ""}${missed ? " missed" : ""}` },
    el("time", { datetime: new Date(ms).toISOString() }, timeOf(ms)),
    " ",
    el("b", { class: "nick" }, nick),
    " ",
    el("span", { class: "text" }, text),
  );
  li.dataset["seq"] = seq === undefined ? "" : String(seq);
  if (missed) {
    li.dataset["missed"] = "true";
    li.append(" ", el("span", { class: "away" }, "(while you were away)"));
  }
  return li;
}

function notice(view: RoomView, text: string): void {
  addItem(view, el("li", { "data-testid": "notice", class: "notice" }, text));
}

function onLine(view: RoomView, data: unknown, d: Delivery<unknown>): void {
  const s = session;
  const line = said(data);
  if (!s || !line) return;
  const verdict = view.backlog.classify(d.seq, d.catchUp);
  if (verdict === "shown") return; // a second copy (an ack lost in a crash): acknowledged again, not shown
  saveShownSeq(s.nick, view.name, view.backlog.shownSeq);
  stopTyping(view, line.nick);
  addItem(view, lineItem(line.nick, line.text, d.timestampMs, d.seq, false, verdict === "missed"));
}

function onTyping(view: RoomView, data: unknown): void {
  const who = said(data);
  if (!who || who.nick === session?.nick) return;
  clearTimeout(view.typing.get(who.nick));
  view.typing.set(who.nick, setTimeout(() => stopTyping(view, who.nick), TYPING_SHOWN_MS));
  renderTyping();
}

function stopTyping(view: RoomView, nick: string): void {
  const t = view.typing.get(nick);
  if (t === undefined) return;
  clearTimeout(t);
  view.typing.delete(nick);
  renderTyping();
}

function renderTyping(): void {
  const view = session?.rooms.get(session.active);
  const names = view ? [...view.typing.keys()] : [];
  ui.typing.textContent =
    names.length === 0 ? "" : names.length === 1 ? `${names[0]} is typing…` : names.length === 2 ? `${names[0]} and ${names[1]} are typing…` : "Several people are typing…";
}

function onPresence(view: RoomView, change: PresenceChange): void {
  const s = session;
  const m = change.member;
  if (!s || m.sessionId === s.client.sessionId) return;
  // A "left" after a disconnect names no client (the broker has dropped the
  // session by then): use the name this page knew for the session, or the
  // nickname in the durable membership's name.
  const name = m.clientName || view.members.get(m.sessionId) || (m.subscription.startsWith("chat-") ? m.subscription.slice(5) : "") || m.clientId || "someone";
  if (change.kind === "joined") view.members.set(m.sessionId, name);
  else {
    view.members.delete(m.sessionId);
    stopTyping(view, name);
  }
  notice(view, `${name} ${change.kind === "joined" ? "joined" : "left"}`);
  renderMembers();
}

async function loadMembers(view: RoomView): Promise<void> {
  const s = session;
  if (!s || !view.room) return;
  try {
    const members = await view.room.members();
    view.members.clear();
    for (const m of members) if (m.sessionId !== s.client.sessionId) view.members.set(m.sessionId, m.clientName || m.clientId || "someone");
    renderMembers();
  } catch {
    // Shown again on the next presence event or reconnect.
  }
}

function renderMembers(): void {
  const view = session?.rooms.get(session.active);
  if (!view) return;
  const names = [...new Set(view.members.values())].sort();
  ui.members.textContent = names.length === 0 ? "Nobody else is here." : `Also here: ${names.join(", ")}`;
}

// ---- rooms ------------------------------------------------------------------

function newView(nick: string, name: string): RoomView {
  return {
    name,
    room: undefined,
    joining: false,
    list: el("ol", { class: "messages", role: "log", "aria-label": `Lines in ${name}` }),
    backlog: new Backlog(shownSeq(nick, name)),
    members: new Map(),
    typing: new Map(),
    unread: 0,
  };
}

async function openRoom(s: Session, name: string): Promise<void> {
  let view = s.rooms.get(name);
  if (view?.room || view?.joining) return;
  if (!view) {
    view = newView(s.nick, name);
    s.rooms.set(name, view);
  }
  view.joining = true;
  renderRoomList();
  try {
    const room = await s.client.join(name, { presence: true, autoAck: true, events: [LINE, TYPING] });
    view.joining = false;
    if (session !== s) return;
    if (s.rooms.get(name) !== view) {
      // Left while the join was on its way.
      await room.leave({ forget: true }).catch(() => undefined);
      return;
    }
    const v = view;
    v.room = room;
    v.backlog.joined(room.info.lastSeq);
    room.on(LINE, (data, d) => onLine(v, data, d));
    room.on(TYPING, (data) => onTyping(v, data));
    room.on("presence", (change) => onPresence(v, change));
    room.on("resumed", (r) => {
      // Joined again after a reconnect: what it missed follows, flagged catchUp.
      v.backlog.joined(r.lastSeq);
      void loadMembers(v);
    });
    room.on("gap", (gap) => notice(v, `${gap.missed} line(s) were deleted before you could read them (seq ${gap.fromSeq}–${gap.toSeq}).`));
    room.on("error", (e) => console.warn(`room ${v.name}:`, e));
    room.on("closed", (closed) => {
      v.room = undefined;
      if (closed.reason === "taken-over") notice(v, "This room was opened with your nickname in another tab or window; it gets your lines now.");
      else if (closed.reason === "deleted") notice(v, "This room was deleted.");
      else if (closed.reason === "resume-failed") notice(v, `Could not join this room again: ${closed.error?.message ?? "refused"}.`);
      renderRoomList();
    });
    saveRooms(s.nick, [...s.rooms.keys()]);
    void loadMembers(v);
  } catch (e) {
    view.joining = false;
    if (session !== s || s.rooms.get(name) !== view) return;
    s.rooms.delete(name);
    if (s.active === name) s.active = s.rooms.keys().next().value ?? "";
    saveRooms(s.nick, [...s.rooms.keys()]);
    showActive();
    alertText(`Could not join ${name}: ${e instanceof Error ? e.message : String(e)}`);
  }
  renderRoomList();
}

async function leaveRoom(s: Session, name: string): Promise<void> {
  const view = s.rooms.get(name);
  if (!view) return;
  s.rooms.delete(name);
  for (const t of view.typing.values()) clearTimeout(t);
  saveRooms(s.nick, [...s.rooms.keys()]);
  saveShownSeq(s.nick, name, 0);
  if (s.active === name) s.active = s.rooms.keys().next().value ?? "";
  showActive();
  renderRoomList();
  // Leaving on purpose forgets the membership: no backlog when joining again.
  try {
    await view.room?.leave({ forget: true });
  } catch (e) {
    console.warn(`leave ${name}:`, e);
  }
  void refreshRooms(s);
}

function showActive(): void {
  const s = session;
  const view = s?.rooms.get(s.active);
  ui.log.replaceChildren();
  for (const v of s?.rooms.values() ?? []) v.list.removeAttribute("data-testid");
  if (!view) {
    ui.roomTitle.textContent = "No room";
    ui.members.textContent = "Join a room to talk.";
    ui.message.disabled = true;
    renderTyping();
    return;
  }
  view.unread = 0;
  view.list.setAttribute("data-testid", "messages");
  ui.log.append(view.list);
  ui.log.scrollTop = ui.log.scrollHeight;
  ui.roomTitle.textContent = `# ${view.name}`;
  ui.message.disabled = false;
  renderMembers();
  renderTyping();
}

let listed: Array<{ name: string; members: number }> = [];

async function refreshRooms(s: Session): Promise<void> {
  try {
    const rooms = await s.client.rooms();
    if (session !== s) return;
    listed = rooms.map((r) => ({ name: r.name, members: r.connectedMembers })).sort((a, b) => a.name.localeCompare(b.name));
    ui.knownRooms.replaceChildren(...listed.map((r) => el("option", { value: r.name })));
    renderRoomList();
  } catch {
    // Kept as it was; tried again later.
  }
}

function renderRoomList(): void {
  const s = session;
  if (!s) return;
  const names = new Set([...s.rooms.keys(), ...listed.map((r) => r.name)]);
  const items = [...names].sort((a, b) => a.localeCompare(b)).map((name) => {
    const view = s.rooms.get(name);
    const here = listed.find((r) => r.name === name)?.members;
    const label = el("span", { class: "room-name" }, `# ${name}`);
    const li = el("li", { class: view ? "joined" : "" });
    if (view) {
      const open = el("button", { type: "button", class: "open" }, label);
      if (name === s.active) open.setAttribute("aria-current", "true");
      if (view.unread > 0) open.append(" ", el("span", { class: "unread", "aria-label": `${view.unread} unread` }, String(view.unread)));
      if (view.joining) open.append(" ", el("span", { class: "hint" }, "(joining…)"));
      else if (!view.room) open.append(" ", el("span", { class: "hint" }, "(not joined: select to join again)"));
      open.addEventListener("click", () => {
        s.active = name;
        if (!view.room) void openRoom(s, name).then(showActive);
        showActive();
        renderRoomList();
        ui.message.focus();
      });
      const leave = el("button", { type: "button", class: "leave link", "aria-label": `Leave ${name}` }, "Leave");
      leave.addEventListener("click", () => void leaveRoom(s, name));
      li.append(open, " ", leave);
    } else {
      const join = el("button", { type: "button", class: "join link", "aria-label": `Join ${name}` }, "Join");
      join.addEventListener("click", () => {
        s.active = name;
        void openRoom(s, name).then(showActive);
        showActive();
      });
      li.append(label, here !== undefined ? el("span", { class: "hint" }, ` ${here} here `) : " ", join);
    }
    return li;
  });
  ui.roomList.replaceChildren(...items);
}

// ---- sending ------------------------------------------------------------

function send(s: Session): void {
  const view = s.rooms.get(s.active);
  const text = ui.message.value.trim();
  if (!view || text === "") return;
  ui.message.value = "";
  s.lastTyping = 0;
  const item = lineItem(s.nick, text, Date.now(), undefined, true, false);
  item.classList.add("pending");
  addItem(view, item);
  ui.log.scrollTop = ui.log.scrollHeight;
  // Everyone in the room except this client (Socket.IO's socket.to(room).emit).
  s.client
    .to(view.name)
    .emit(LINE, { nick: s.nick, text })
    .then(
      (r) => {
        item.dataset["seq"] = String(r.seq);
        item.classList.remove("pending");
      },
      (e: unknown) => {
        item.classList.remove("pending");
        item.classList.add("failed");
        item.append(" ", el("span", { class: "error" }, `(not sent: ${e instanceof Error ? e.message : String(e)})`));
      },
    );
}

function typing(s: Session): void {
  const now = Date.now();
  if (ui.message.value === "" || !s.rooms.get(s.active)?.room || now - s.lastTyping < TYPING_EVERY_MS || s.client.state !== "connected") return;
  s.lastTyping = now;
  // Volatile: never stored, only to whoever is in the room now.
  s.client
    .to(s.active)
    .volatile.emit(TYPING, { nick: s.nick, text: "" })
    .catch(() => undefined);
}

// ---- connecting -------------------------------------------------------------

function wsUrl(): string {
  const u = new URL("ws", location.href);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return u.href;
}

function alertText(text: string): void {
  ui.nickError.textContent = text;
  if (session) {
    const view = session.rooms.get(session.active);
    if (view) notice(view, text);
  }
}

function validNickname(nick: string): string | undefined {
  if (nick === "") return "Pick a nickname.";
  if ([...nick].length > 32) return "At most 32 characters.";
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(nick)) return "No control characters.";
  return undefined;
}

/** Shows the client's status events at the top, while `gen` is the nickname's generation. */
async function showStatus(client: Client<unknown>, gen: number): Promise<void> {
  for await (const st of client.status()) {
    if (gen !== generation) continue; // the nickname changed; this client is being closed
    switch (st.type) {
      case "connect":
        showState("connected", "connected");
        break;
      case "disconnect":
        if (st.willReconnect) showState("reconnecting", "reconnecting…");
        break;
      case "reconnecting":
        showState("reconnecting", `reconnecting… (attempt ${st.attempt})`);
        break;
      case "recovered":
        if (session?.client === client) void refreshRooms(session);
        break;
      case "close":
        // Before the first connection, enter() says why (client.ready() rejects).
        if (session?.client !== client) break;
        // A refusal that trying again cannot fix (an administrator closed the
        // session, the namespace is closed): back to the nickname form.
        if (st.error instanceof BrokerError && !isRetryable(st.error)) leaveSession(`Disconnected: ${st.error.message}`);
        else showState("closed", `disconnected: ${st.reason}`);
        break;
      case "dropped":
        break; // only older states were dropped; the newest is still to come
    }
  }
}

async function enter(nick: string): Promise<void> {
  const gen = ++generation;
  saveNickname(nick);
  ui.nickError.textContent = "";
  ui.nickForm.hidden = true;
  ui.me.hidden = false;
  ui.meName.textContent = nick;
  showState("connecting", "connecting…");
  // The SDK tries the first connection with the same backoff as reconnects,
  // for as long as it takes, and gives up only on a refusal that trying
  // again cannot fix.
  const client = createClient<unknown>(wsUrl(), { clientId: clientIdOf(nick), clientName: nick, codec: jsonCodec<unknown>() });
  connecting = client;
  void showStatus(client, gen);
  try {
    await client.ready();
  } catch (e) {
    if (gen !== generation) return;
    leaveSession(`Could not connect as ${nick}: ${e instanceof Error ? e.message : String(e)}`);
    return;
  } finally {
    if (connecting === client) connecting = undefined;
  }
  if (gen !== generation) {
    client.close();
    return;
  }
  const s: Session = { nick, client, rooms: new Map(), active: "", roomsTimer: undefined, lastTyping: 0 };
  session = s;
  // A membership taken over by another tab, or a deleted room, closes its
  // room (see openRoom); what is left here is for the console.
  client.on("error", (e) => console.warn("roomq:", e));
  s.roomsTimer = setInterval(() => {
    if (client.state === "connected") void refreshRooms(s);
  }, ROOMS_EVERY_MS);

  ui.chat.hidden = false;
  const rooms = savedRooms(nick);
  s.active = rooms[0] ?? "";
  for (const name of rooms) s.rooms.set(name, newView(nick, name));
  showActive();
  await Promise.all(rooms.map((name) => openRoom(s, name)));
  if (session !== s) return;
  showActive();
  void refreshRooms(s);
  ui.message.focus();
}

function leaveSession(error = ""): void {
  generation++;
  connecting?.close();
  connecting = undefined;
  const s = session;
  session = undefined;
  if (s) {
    clearInterval(s.roomsTimer);
    for (const v of s.rooms.values()) for (const t of v.typing.values()) clearTimeout(t);
    s.client.close();
  }
  listed = [];
  ui.chat.hidden = true;
  ui.me.hidden = true;
  ui.nickForm.hidden = false;
  ui.nickError.textContent = error;
  ui.log.replaceChildren();
  ui.roomList.replaceChildren();
  showState("offline", "not connected");
  ui.nickname.focus();
}

// ---- wiring -------------------------------------------------------------

ui.nickForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const nick = ui.nickname.value.trim();
  const problem = validNickname(nick);
  if (problem) {
    ui.nickError.textContent = problem;
    return;
  }
  void enter(nick);
});

ui.changeNick.addEventListener("click", () => {
  saveNickname("");
  leaveSession();
});

ui.joinForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const s = session;
  const name = ui.roomInput.value.trim();
  if (!s || name === "") return;
  ui.roomInput.value = "";
  s.active = name;
  void openRoom(s, name).then(() => {
    showActive();
    void refreshRooms(s);
  });
  showActive();
});

ui.refreshRooms.addEventListener("click", () => {
  if (session) void refreshRooms(session);
});

ui.sendForm.addEventListener("submit", (e) => {
  e.preventDefault();
  if (session) send(session);
});

ui.message.addEventListener("input", () => {
  if (session) typing(session);
});

const remembered = savedNickname();
ui.nickname.value = remembered;
if (remembered !== "" && validNickname(remembered) === undefined) void enter(remembered);
else ui.nickname.focus();
