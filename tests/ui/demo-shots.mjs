// Screenshots of the running demo park (`cargo run -p vigil-tests --bin vigil-demo`) for the README
// and docs/screenshots/: the overview and a gas-camera alarm with its snapshot on the timeline.
// It fails (exit 1) if the camera alarm or its image is missing, so a refreshed screenshot always
// shows what the demo promises.
//
// Usage (in tests/ui after `npm ci`): VIGIL_URL=http://127.0.0.1:8080 VIGIL_ADMIN='admin:<password>'
//   VIGIL_SCREENSHOTS=../../docs/screenshots node demo-shots.mjs

import { chromium } from 'playwright-core';
import path from 'node:path';

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`${k} is not set`);
  return v;
};
const BASE = env('VIGIL_URL');
const [user, ...rest] = env('VIGIL_ADMIN').split(':');
const SHOTS = env('VIGIL_SCREENSHOTS');

const browser = await chromium.launch({ executablePath: env('CHROMIUM', '/usr/bin/chromium'), args: ['--no-sandbox'] });
const context = await browser.newContext({ viewport: { width: 1600, height: 900 }, locale: 'zh-CN', timezoneId: 'Asia/Shanghai' });
const page = await context.newPage();
let failed = false;
try {
  await page.goto(`${BASE}/`);
  await page.waitForSelector('#login-form');
  await page.fill('#login-user', user);
  await page.fill('#login-password', rest.join(':'));
  await page.click('#login-submit');
  await page.waitForSelector('nav a[href="#/alarms"]');

  await page.goto(`${BASE}/#/overview`);
  await page.waitForTimeout(2500);
  await page.screenshot({ path: path.join(SHOTS, 'demo-overview.png') });
  console.log('screenshot: demo-overview.png');

  await page.goto(`${BASE}/#/alarms`);
  const row = '#alarm-rows tr[data-condition="GasLeak"]';
  await page.waitForSelector(row, { timeout: 120000 });
  await page.click(`${row} td.c-time`);
  await page.waitForSelector('#alarm-timeline .evidence img', { timeout: 30000 });
  const loaded = await page.$eval('#alarm-timeline .evidence img', (img) => img.decode().then(() => img.naturalWidth).catch(() => 0));
  if (!(loaded > 0)) throw new Error('the snapshot on the camera alarm did not load');
  await page.waitForTimeout(500);
  await page.screenshot({ path: path.join(SHOTS, 'demo-camera-alarm.png') });
  console.log(`screenshot: demo-camera-alarm.png (snapshot ${loaded} px wide)`);
} catch (e) {
  failed = true;
  console.log(`FAIL: ${e.message}`);
  await page.screenshot({ path: path.join(SHOTS, 'demo-failure.png') }).catch(() => {});
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
