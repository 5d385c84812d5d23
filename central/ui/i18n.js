// Texts in Simplified Chinese (the default: the monitoring room's language) and English.
// `t(key, vars, fallback)`; a key missing from the current language is recorded in `missing`
// (the e2e test fails on any) and shown as the fallback or the key itself.

const LANG_KEY = 'vigil.lang';

const zh = {
  brand: '化工园区安全监测', no_screens: '当前角色没有监控界面（请使用用户管理接口）。',
  'nav.overview': '总览', 'nav.alarms': '报警控制台', 'nav.points': '测点', 'nav.gateways': '网关与设备',
  'nav.windows': '检修与阈值', 'nav.reports': '报表与审计',
  logout: '退出', ok: '确定', cancel: '取消', approve: '批准', reject: '驳回', refresh: '刷新', more: '更多',
  csv: '导出 CSV', loading: '加载中…', unknown: '未知', never: '从未', ago: '{d} 前', overdue: '已超时',
  done: '已完成：{what}', limit: '限值', shelved: '已搁置', suppressed: '检修屏蔽', timeline: '处置时间线', online: '在线', offline: '离线',
  'sound.on': '声音：开', 'sound.off': '已静音',
  'conn.live': '实时', 'conn.connecting': '连接中', 'conn.reconnecting': '重连中', 'conn.idle': '未连接',
  'session.ended': '会话已结束，请重新登录。',
  'role.park_admin': '园区管理员', 'role.security_admin': '安全管理员', 'role.auditor': '审计员',
  'role.operator': '值班员', 'role.enterprise_user': '企业用户', 'role.field_technician': '现场工程师',
  'login.title': '登录', 'login.user': '用户名', 'login.password': '密码', 'login.submit': '登录',
  'login.checking': '正在验证…', 'login.wrong': '用户名或密码错误。', 'login.locked': '账户已锁定，{until} 后可再次登录。',
  'login.expired': '密码已过期，请设置新密码。', 'login.network': '无法连接到服务器。',
  'login.note': '连续多次输入错误将锁定账户并产生安全告警。所有操作均记录审计日志。',
  'password.change': '修改密码', 'password.old': '当前密码', 'password.new': '新密码', 'password.again': '再次输入新密码',
  'password.mismatch': '两次输入的新密码不一致。', 'password.changed': '密码已修改。',
  'password.changed_login': '密码已修改，请用新密码登录。', 'password.refused': '新密码不符合策略：',
  'password.expires_soon': '密码将在 {days} 天后过期，请及时修改。',
  'col.grade': '级别', 'col.state': '状态', 'col.time': '时间', 'col.source': '报警源', 'col.condition': '类型',
  'col.value': '数值 / 限值', 'col.enterprise': '企业', 'col.stage': '处置阶段', 'col.pickup': '接警时限',
  'col.gateway': '网关', 'col.offline_for': '离线时长', 'col.point': '测点', 'col.unit': '单位', 'col.limits': '报警限值',
  'col.status': '状态', 'col.last_seen': '最后通信', 'col.spool': '缓存深度', 'col.oldest_unacked': '最早未确认',
  'col.dropped': '丢弃计数', 'col.clock_offset': '时钟偏差', 'col.agent': '程序版本', 'col.config': '配置版本',
  'col.id': '编号', 'col.covers': '范围', 'col.from': '开始', 'col.to': '结束', 'col.reason': '原因',
  'col.requested_by': '申请人', 'col.before': '原限值', 'col.after': '新限值', 'col.requested': '申请时间',
  'f.all_states': '全部状态', 'f.all_types': '全部类型', 'f.all_enterprises': '全部企业', 'f.search': '搜索…',
  'f.how': '核实方式', 'f.reason': '原因', 'f.to': '派发给', 'f.note': '备注', 'f.feedback': '反馈内容',
  'f.report_name': '报告名称', 'f.report_text': '报告内容', 'f.shelve_for': '搁置时长',
  'how.video': '视频核实', 'how.trend': '趋势核实', 'how.site': '现场核实', 'how.phone': '电话核实',
  'alarms.none': '没有符合条件的报警。', 'alarms.select': '选择一条报警查看详情与处置。',
  'alarms.count_title': '活动报警数（括号内为未确认）',
  'state.ActiveUnacked': '报警未确认', 'state.ActiveAcked': '报警已确认', 'state.ReturnedUnacked': '已恢复未确认', 'state.Normal': '已恢复',
  'stage.Raised': '待接警', 'stage.Acknowledged': '已接警', 'stage.Verified': '已核实', 'stage.FalseAlarm': '误报',
  'stage.Dispatched': '已派发', 'stage.Feedback': '已反馈', 'stage.Reviewed': '已复核', 'stage.Closed': '已关闭',
  'cond.HiHi': '高高报', 'cond.Hi': '高报', 'cond.Lo': '低报', 'cond.LoLo': '低低报', 'cond.RateOfChange': '变化率',
  'cond.BadQuality': '数据质量坏', 'cond.Stale': '数据中断', 'cond.Frozen': '数值冻结', 'cond.Digital': '开关量报警',
  'cond.GasLeak': '气体泄漏', 'cond.GatewayOffline': '网关离线', 'cond.DeviceOffline': '设备离线',
  'cond.SourceFault': '采集故障', 'cond.DataLoss': '数据丢失',
  'gas.Blue': '蓝色', 'gas.Yellow': '黄色', 'gas.Orange': '橙色', 'gas.Red': '红色',
  'act.acknowledge': '确认', 'act.verify': '核实', 'act.false-alarm': '误报', 'act.dispatch': '派发', 'act.feedback': '反馈',
  'act.report': '上传报告', 'act.review': '复核', 'act.close': '关闭', 'act.shelve': '搁置', 'act.unshelve': '取消搁置',
  'd.raised': '首次报警', 'd.last_active': '最近报警', 'd.cleared': '恢复时间', 'd.received': '接收时间',
  'd.activations': '报警次数', 'd.pickup': '接警时限', 'd.supervisions': '督办次数', 'd.gas_level': '泄漏等级',
  'd.false_reason': '误报原因', 'd.report': '调查报告', 'd.shelved_until': '搁置至', 'd.suppressed': '检修屏蔽',
  'tl.raised': '报警产生', 'tl.reactivated': '再次报警', 'tl.cleared': '报警恢复', 'tl.acknowledge': '确认',
  'tl.verify': '核实', 'tl.false_alarm': '误报', 'tl.dispatch': '派发', 'tl.feedback': '反馈', 'tl.review': '复核',
  'tl.attach_report': '上传报告', 'tl.close': '关闭', 'tl.shelve': '搁置', 'tl.unshelve': '取消搁置',
  'tl.supervision': '督办', 'tl.promoted': '补传数据转实时', 'tl.reannunciated': '重新报警', 'tl.gas_level_raised': '泄漏等级升高',
  'tl.auto_close': '自动关闭', 'tl.suppressed': '检修屏蔽', 'tl.detection': '摄像机检测',
  'dk.value': '数值', 'dk.limit': '限值', 'dk.received_ms': '接收时间', 'dk.annunciated': '已声光报警', 'dk.shelved': '已搁置',
  'dk.out_of_service': '停用', 'dk.suppressed_by': '检修窗口', 'dk.reason': '原因', 'dk.comment': '备注', 'dk.note': '备注',
  yes: '是', no: '否',
  'det.camera': '摄像机', 'det.preset': '预置位 {n}', 'det.pan': '水平 {v}°', 'det.tilt': '俯仰 {v}°',
  'det.confidence': '置信度 {v}%', 'det.snapshot': '检测抓图', 'det.open_image': '查看原图', 'det.no_image': '无抓图',
  'ov.active_by_grade': '活动报警（按级别）', 'ov.unacked': '未确认 {n}', 'ov.online_rate': '网关在线率',
  'ov.overall': '全部网关（指标 ≥ {target}）', 'ov.major': '重大危险源（指标 {target}）', 'ov.gateways_online': '在线 {on} / 共 {n}',
  'ov.major_tag': '重大危险源', 'ov.all_online': '全部在线。', 'ov.enterprises': '企业报警排名', 'ov.open': '未关闭',
  'ov.layout': '园区布局',
  'lg.normal': '正常', 'lg.alarm-S': 'S 级', 'lg.alarm-A': 'A 级', 'lg.alarm-B': 'B–D 级', 'lg.offline': '离线',
  'pt.device': '设备', 'pt.range': '量程', 'pt.read_at': '采集地址', 'pt.no_catalogue': '网关尚未上报测点目录。', 'col.device': '设备',
  'pt.all': '全部测点', 'pt.live': '实时值', 'pt.limits': '报警限值', 'pt.no_limits': '未定义报警限值。', 'pt.alarms': '当前报警',
  'pt.no_alarms': '无报警。', 'pt.trend': '趋势', 'pt.no_data': '暂无数据', 'pt.age': '{age} 前',
  'pt.max': '最大', 'pt.min': '最小', 'pt.avg': '平均', 'pt.bad': '质量坏/不确定',
  'pt.summary': '{samples} 个样本，{buckets} 个区间（每 {bucket}），{gaps} 个区间无数据（断点）',
  'pt.bad_marked': '红点为质量坏或不确定的数据', 'pt.zoom_hint': '拖动放大，双击还原', 'pt.none': '没有可见的测点。',
  'preset.1h': '1 小时', 'preset.1d': '1 天', 'preset.7d': '7 天', 'preset.30d': '30 天', 'preset.1y': '1 年',
  'q.good': '质量好', 'q.uncertain': '质量不确定', 'q.bad': '质量坏',
  'gw.none': '没有可见的网关。', 'gw.dropped_totals': '{s} 样本 · {e} 事件',
  'gw.dropped_detail': '{b} 批 / {s} 样本 / {e} 事件', 'gw.class.alarm_event': '报警/事件', 'gw.class.live': '实时', 'gw.class.backfill': '补传', 'gw.spool_split': '报警/实时/补传批次',
  'win.title': '检修窗口（故障点屏蔽）', 'win.request': '申请检修窗口', 'win.none': '暂无检修窗口。',
  'win.points': '测点（逗号分隔）', 'win.gateways': '整台网关（逗号分隔）', 'win.not_own': '不能审批自己的申请',
  'thr.title': '阈值变更申请', 'thr.request': '申请变更阈值', 'thr.none': '暂无阈值变更申请。', 'thr.deadband': '死区',
  'ws.Requested': '待审批', 'ws.Approved': '已批准', 'ws.Rejected': '已驳回', 'ws.Expired': '已过期',
  'kpi.title': '报警负荷指标（EEMUA 191）', 'kpi.alarms': '报警数', 'kpi.per_hour': '每小时', 'kpi.hours_over_3': '超过 3 次的小时占比',
  'kpi.floods': '报警泛滥', 'kpi.standing': '长期报警', 'kpi.stale': '超 24 小时', 'kpi.chattering': '振荡测点',
  'kpi.offline': '离线报警', 'kpi.top': '最频繁的报警源', 'kpi.none': '该时段没有数据。',
  'range.24h': '最近 24 小时', 'range.7d': '最近 7 天', 'range.30d': '最近 30 天',
  'log.audit': '操作审计日志', 'log.api_calls': '接口调用日志', 'log.none': '没有记录。',
};

const en = {
  brand: 'Chemical park safety monitoring', no_screens: 'This role has no monitoring screens (use the user administration API).',
  'nav.overview': 'Overview', 'nav.alarms': 'Alarm console', 'nav.points': 'Points', 'nav.gateways': 'Gateways',
  'nav.windows': 'Maintenance & limits', 'nav.reports': 'Reports & audit',
  logout: 'Log out', ok: 'OK', cancel: 'Cancel', approve: 'Approve', reject: 'Reject', refresh: 'Refresh', more: 'More',
  csv: 'Export CSV', loading: 'Loading…', unknown: 'unknown', never: 'never', ago: '{d} ago', overdue: 'overdue',
  done: 'Done: {what}', limit: 'limit', shelved: 'shelved', suppressed: 'suppressed', timeline: 'Timeline', online: 'online', offline: 'offline',
  'sound.on': 'Sound: on', 'sound.off': 'Muted',
  'conn.live': 'Live', 'conn.connecting': 'Connecting', 'conn.reconnecting': 'Reconnecting', 'conn.idle': 'Not connected',
  'session.ended': 'Your session ended; please log in again.',
  'role.park_admin': 'Park admin', 'role.security_admin': 'Security admin', 'role.auditor': 'Auditor',
  'role.operator': 'Operator', 'role.enterprise_user': 'Enterprise user', 'role.field_technician': 'Field technician',
  'login.title': 'Log in', 'login.user': 'User name', 'login.password': 'Password', 'login.submit': 'Log in',
  'login.checking': 'Checking…', 'login.wrong': 'Wrong user name or password.', 'login.locked': 'Account locked until {until}.',
  'login.expired': 'Your password has expired; choose a new one.', 'login.network': 'Cannot reach the server.',
  'login.note': 'Repeated failures lock the account and raise a security alert. Every action is audited.',
  'password.change': 'Change password', 'password.old': 'Current password', 'password.new': 'New password', 'password.again': 'New password again',
  'password.mismatch': 'The new passwords differ.', 'password.changed': 'Password changed.',
  'password.changed_login': 'Password changed; log in with the new one.', 'password.refused': 'The new password breaks the policy:',
  'password.expires_soon': 'Your password expires in {days} days.',
  'col.grade': 'Grade', 'col.state': 'State', 'col.time': 'Time', 'col.source': 'Source', 'col.condition': 'Type',
  'col.value': 'Value / limit', 'col.enterprise': 'Enterprise', 'col.stage': 'Stage', 'col.pickup': 'Pick-up due',
  'col.gateway': 'Gateway', 'col.offline_for': 'Offline for', 'col.point': 'Point', 'col.unit': 'Unit', 'col.limits': 'Limits',
  'col.status': 'Status', 'col.last_seen': 'Last seen', 'col.spool': 'Spool depth', 'col.oldest_unacked': 'Oldest unacked',
  'col.dropped': 'Dropped', 'col.clock_offset': 'Clock offset', 'col.agent': 'Agent', 'col.config': 'Config',
  'col.id': 'Id', 'col.covers': 'Covers', 'col.from': 'From', 'col.to': 'To', 'col.reason': 'Reason',
  'col.requested_by': 'Requested by', 'col.before': 'Before', 'col.after': 'After', 'col.requested': 'Requested',
  'f.all_states': 'All states', 'f.all_types': 'All types', 'f.all_enterprises': 'All enterprises', 'f.search': 'Search…',
  'f.how': 'Verified by', 'f.reason': 'Reason', 'f.to': 'Dispatch to', 'f.note': 'Note', 'f.feedback': 'Feedback',
  'f.report_name': 'Report name', 'f.report_text': 'Report text', 'f.shelve_for': 'Shelve for',
  'how.video': 'Video', 'how.trend': 'Trend', 'how.site': 'On site', 'how.phone': 'Phone',
  'alarms.none': 'No alarms match.', 'alarms.select': 'Select an alarm to see its details and act on it.',
  'alarms.count_title': 'Active alarms (unacknowledged in brackets)',
  'state.ActiveUnacked': 'Active, unacked', 'state.ActiveAcked': 'Active, acked', 'state.ReturnedUnacked': 'Returned, unacked', 'state.Normal': 'Normal',
  'stage.Raised': 'Raised', 'stage.Acknowledged': 'Acknowledged', 'stage.Verified': 'Verified', 'stage.FalseAlarm': 'False alarm',
  'stage.Dispatched': 'Dispatched', 'stage.Feedback': 'Feedback', 'stage.Reviewed': 'Reviewed', 'stage.Closed': 'Closed',
  'cond.HiHi': 'High-high', 'cond.Hi': 'High', 'cond.Lo': 'Low', 'cond.LoLo': 'Low-low', 'cond.RateOfChange': 'Rate of change',
  'cond.BadQuality': 'Bad quality', 'cond.Stale': 'Stale', 'cond.Frozen': 'Frozen', 'cond.Digital': 'Digital input',
  'cond.GasLeak': 'Gas leak', 'cond.GatewayOffline': 'Gateway offline', 'cond.DeviceOffline': 'Device offline',
  'cond.SourceFault': 'Source fault', 'cond.DataLoss': 'Data loss',
  'gas.Blue': 'blue', 'gas.Yellow': 'yellow', 'gas.Orange': 'orange', 'gas.Red': 'red',
  'act.acknowledge': 'Acknowledge', 'act.verify': 'Verify', 'act.false-alarm': 'False alarm', 'act.dispatch': 'Dispatch', 'act.feedback': 'Feedback',
  'act.report': 'Attach report', 'act.review': 'Review', 'act.close': 'Close', 'act.shelve': 'Shelve', 'act.unshelve': 'Unshelve',
  'd.raised': 'First raised', 'd.last_active': 'Last active', 'd.cleared': 'Cleared', 'd.received': 'Received',
  'd.activations': 'Activations', 'd.pickup': 'Pick-up due', 'd.supervisions': 'Supervisions', 'd.gas_level': 'Leak level',
  'd.false_reason': 'False-alarm reason', 'd.report': 'Report', 'd.shelved_until': 'Shelved until', 'd.suppressed': 'Suppressed by window',
  'tl.raised': 'Raised', 'tl.reactivated': 'Re-activated', 'tl.cleared': 'Cleared', 'tl.acknowledge': 'Acknowledged',
  'tl.verify': 'Verified', 'tl.false_alarm': 'False alarm', 'tl.dispatch': 'Dispatched', 'tl.feedback': 'Feedback', 'tl.review': 'Reviewed',
  'tl.attach_report': 'Report attached', 'tl.close': 'Closed', 'tl.shelve': 'Shelved', 'tl.unshelve': 'Unshelved',
  'tl.supervision': 'Supervision', 'tl.promoted': 'Promoted to live', 'tl.reannunciated': 'Re-annunciated', 'tl.gas_level_raised': 'Leak level raised',
  'tl.auto_close': 'Closed automatically', 'tl.suppressed': 'Suppressed', 'tl.detection': 'Camera detection',
  'dk.value': 'value', 'dk.limit': 'limit', 'dk.received_ms': 'received', 'dk.annunciated': 'annunciated', 'dk.shelved': 'shelved',
  'dk.out_of_service': 'out of service', 'dk.suppressed_by': 'maintenance window', 'dk.reason': 'reason', 'dk.comment': 'comment', 'dk.note': 'note',
  yes: 'yes', no: 'no',
  'det.camera': 'camera', 'det.preset': 'preset {n}', 'det.pan': 'pan {v}°', 'det.tilt': 'tilt {v}°',
  'det.confidence': 'confidence {v}%', 'det.snapshot': 'detection snapshot', 'det.open_image': 'open the full image', 'det.no_image': 'no snapshot',
  'ov.active_by_grade': 'Active alarms by grade', 'ov.unacked': '{n} unacked', 'ov.online_rate': 'Gateway online rate',
  'ov.overall': 'All gateways (target ≥ {target})', 'ov.major': 'Major hazards (target {target})', 'ov.gateways_online': '{on} of {n} online',
  'ov.major_tag': 'major hazard', 'ov.all_online': 'All online.', 'ov.enterprises': 'Enterprises by open alarms', 'ov.open': 'Open',
  'ov.layout': 'Park layout',
  'lg.normal': 'Normal', 'lg.alarm-S': 'Grade S', 'lg.alarm-A': 'Grade A', 'lg.alarm-B': 'Grade B–D', 'lg.offline': 'Offline',
  'pt.device': 'Device', 'pt.range': 'Range', 'pt.read_at': 'Read at', 'pt.no_catalogue': 'The gateway has not reported its point catalogue yet.', 'col.device': 'Device',
  'pt.all': 'All points', 'pt.live': 'Live value', 'pt.limits': 'Alarm limits', 'pt.no_limits': 'No alarm limits defined.', 'pt.alarms': 'Alarms now',
  'pt.no_alarms': 'No alarms.', 'pt.trend': 'Trend', 'pt.no_data': 'No data yet', 'pt.age': '{age} ago',
  'pt.max': 'max', 'pt.min': 'min', 'pt.avg': 'mean', 'pt.bad': 'bad/uncertain',
  'pt.summary': '{samples} samples in {buckets} buckets of {bucket}; {gaps} empty (gaps)',
  'pt.bad_marked': 'red dots mark bad or uncertain quality', 'pt.zoom_hint': 'drag to zoom, double-click to reset', 'pt.none': 'No points visible.',
  'preset.1h': '1 h', 'preset.1d': '1 d', 'preset.7d': '7 d', 'preset.30d': '30 d', 'preset.1y': '1 y',
  'q.good': 'good', 'q.uncertain': 'uncertain', 'q.bad': 'bad',
  'gw.none': 'No gateways visible.', 'gw.dropped_totals': '{s} samples · {e} events',
  'gw.dropped_detail': '{b} batches / {s} samples / {e} events', 'gw.class.alarm_event': 'alarm/event', 'gw.class.live': 'live', 'gw.class.backfill': 'backfill', 'gw.spool_split': 'alarm / live / backfill batches',
  'win.title': 'Maintenance windows (fault-point suppression)', 'win.request': 'Request a window', 'win.none': 'No maintenance windows.',
  'win.points': 'Points (comma-separated)', 'win.gateways': 'Whole gateways (comma-separated)', 'win.not_own': 'You cannot decide your own request',
  'thr.title': 'Threshold change requests', 'thr.request': 'Request a limit change', 'thr.none': 'No threshold requests.', 'thr.deadband': 'Deadband',
  'ws.Requested': 'Requested', 'ws.Approved': 'Approved', 'ws.Rejected': 'Rejected', 'ws.Expired': 'Expired',
  'kpi.title': 'Alarm load (EEMUA 191)', 'kpi.alarms': 'Alarms', 'kpi.per_hour': 'Per hour', 'kpi.hours_over_3': 'Hours with > 3',
  'kpi.floods': 'Floods', 'kpi.standing': 'Standing', 'kpi.stale': 'Over 24 h', 'kpi.chattering': 'Chattering',
  'kpi.offline': 'Offline alarms', 'kpi.top': 'Most frequent sources', 'kpi.none': 'No data in this range.',
  'range.24h': 'Last 24 h', 'range.7d': 'Last 7 days', 'range.30d': 'Last 30 days',
  'log.audit': 'Audit log', 'log.api_calls': 'API-call log', 'log.none': 'No records.',
};

const TABLES = { zh, en };
const listeners = new Set();
let current = TABLES[localStorage.getItem(LANG_KEY)] ? localStorage.getItem(LANG_KEY) : 'zh';

/** Keys asked for but missing from the current language. */
export const missing = new Set();

export const lang = () => current;

export function setLang(l) {
  if (!TABLES[l] || l === current) return;
  current = l;
  localStorage.setItem(LANG_KEY, l);
  for (const f of listeners) f();
}

export function onLang(f) { listeners.add(f); }

/** The text of `key` with `{name}` placeholders filled from `vars`. */
export function t(key, vars, fallback) {
  let s = TABLES[current][key];
  if (s === undefined) {
    if (fallback === undefined) missing.add(key);
    s = fallback ?? key;
  }
  if (vars) s = s.replace(/\{(\w+)\}/g, (m, k) => (vars[k] === undefined ? m : String(vars[k])));
  return s;
}
