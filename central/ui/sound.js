// The audible cue for S and A alarms: a two-tone chime synthesised with Web Audio (no sound file to
// fetch). Browsers only allow sound after a user gesture; `unlock()` runs on the login click or on
// any click, and `ready()` says whether sound can play.

const MUTE_KEY = 'vigil.muted';
let ctx = null;

export function unlock() {
  try {
    if (!ctx) ctx = new AudioContext();
    if (ctx.state === 'suspended') ctx.resume();
  } catch { /* no audio device: the visual cue remains */ }
}

export const ready = () => !!ctx && ctx.state === 'running';
export const muted = () => localStorage.getItem(MUTE_KEY) === '1';
export function setMuted(m) { localStorage.setItem(MUTE_KEY, m ? '1' : '0'); }

/** Counts chimes (the e2e test reads it to see the cue fired even where no speaker is). */
export let chimes = 0;

/** Plays the chime once unless muted; `grade` S is higher and longer than A. */
export function chime(grade) {
  if (muted()) return;
  chimes += 1;
  if (!ready()) return;
  const t0 = ctx.currentTime;
  const tones = grade === 'S' ? [988, 740, 988, 740] : [880, 660];
  tones.forEach((f, i) => {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.type = 'square';
    osc.frequency.value = f;
    gain.gain.setValueAtTime(0.0001, t0 + i * 0.22);
    gain.gain.exponentialRampToValueAtTime(0.25, t0 + i * 0.22 + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, t0 + i * 0.22 + 0.2);
    osc.connect(gain).connect(ctx.destination);
    osc.start(t0 + i * 0.22);
    osc.stop(t0 + i * 0.22 + 0.21);
  });
}
