#!lua name=gridpod
-- The transitions of the Redis backend, one function each, so that every one is
-- atomic. Every key a function touches shares the hash tag of KEYS[1] (the base
-- "<prefix>:{<tag>}"): in a cluster, each call runs on the one node of that slot.
--
-- Each function takes ARGV[1] (the time in Unix seconds, or "" for the server's
-- clock), ARGV[2] (how many events a session's log keeps) and ARGV[3] (20 random hex
-- digits, from which the function makes the ids of tasks it creates), then its own.
--
-- Validation comes before the first write: a script that fails midway would leave
-- its earlier writes in place. Errors are replies "GP_<KIND> message".
--
-- The status numbers come from the header that the Python side prepends.

local function C(...)
  return redis.call(...)
end

-- -- context --------------------------------------------------------------------

local function clock(arg)
  if arg ~= nil and arg ~= '' then
    return tonumber(arg)
  end
  local t = C('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function stamp(x)
  return string.format('%.6f', x)
end

local function context(keys, args)
  local now = clock(args[1])
  return {
    B = keys[1],
    tag = string.match(keys[1], '{(.*)}'),
    now = now,
    nows = stamp(now),
    keep = tonumber(args[2]),
    nonce = args[3],
    made = 0,
    queued = {},
    state = false,
    dropped = {},
  }
end

local function fresh_id(ctx)
  ctx.made = ctx.made + 1
  local n = ctx.nonce
  return string.format('%s-%s-%s-%s-%s%04x', ctx.tag, string.sub(n, 1, 4),
    string.sub(n, 5, 8), string.sub(n, 9, 12), string.sub(n, 13, 20), ctx.made)
end

local function fail_with(kind, message)
  return redis.error_reply('GP_' .. kind .. ' ' .. message)
end

local function quoted(text)
  return "'" .. text .. "'"
end

local function hash(key)
  local flat = C('HGETALL', key)
  if #flat == 0 then
    return nil
  end
  local t = {}
  for i = 1, #flat, 2 do
    t[flat[i]] = flat[i + 1]
  end
  return t
end

local function list(json)
  if json == nil or json == '' then
    return {}
  end
  local decoded = cjson.decode(json)
  if type(decoded) ~= 'table' then
    return {}
  end
  return decoded
end

local function unhex(text)
  return (string.gsub(text, '..', function(pair)
    return string.char(tonumber(pair, 16))
  end))
end

local function json_list(items)
  if #items == 0 then
    return '[]'
  end
  return cjson.encode(items)
end

-- An ISO 8601 UTC time, for messages (no os.date in Redis's Lua).
local function iso(seconds)
  local whole = math.floor(seconds)
  local days = math.floor(whole / 86400)
  local rest = whole - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  local micro = math.floor((seconds - whole) * 1000000 + 0.5)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%06d+00:00', year, month, day,
    math.floor(rest / 3600), math.floor(rest % 3600 / 60), rest % 60, micro)
end

-- -- keys -----------------------------------------------------------------------

local function k_session(ctx, sid) return ctx.B .. ':s:' .. sid end
local function k_task(ctx, tid) return ctx.B .. ':t:' .. tid end
local function k_tasks(ctx, sid) return ctx.B .. ':tasks:' .. sid end
local function k_result(ctx, sid, key) return ctx.B .. ':r:' .. sid .. ':' .. key end
local function k_results(ctx, sid) return ctx.B .. ':results:' .. sid end
local function k_owned(ctx, tid) return ctx.B .. ':own:' .. tid end
local function k_waiting(ctx, sid, key) return ctx.B .. ':dep:' .. sid .. ':' .. key end
local function k_staged(ctx, tid) return ctx.B .. ':sr:' .. tid end
local function k_subtasks(ctx, tid) return ctx.B .. ':sub:' .. tid end
local function k_queue(ctx, sid, part) return ctx.B .. ':q:' .. sid .. ':' .. part end
local function k_leases(ctx, sid) return ctx.B .. ':lease:' .. sid end
local function k_events(ctx, sid) return ctx.B .. ':ev:' .. sid end
local function k_apps(ctx, sid) return ctx.B .. ':apps:' .. sid end
local function k_chunks(ctx, bid) return ctx.B .. ':b:' .. bid end
local function k_blob(ctx, bid) return ctx.B .. ':bm:' .. bid end

local function colocated(ctx, id)
  return string.sub(id, 1, #ctx.tag) == ctx.tag
end

-- -- events ---------------------------------------------------------------------

local function emit(ctx, sid, kind, data)
  local seq = C('HINCRBY', k_session(ctx, sid), 'seq', 1)
  C('XADD', k_events(ctx, sid), 'MAXLEN', '~', ctx.keep, seq .. '-1', 'k', kind,
    'd', cjson.encode(data), 'at', ctx.nows)
  ctx.state = true
end

local function new_task_event(ctx, tid, t)
  local retry_of = list(t.rty)
  local origin = retry_of[1] or tid
  emit(ctx, t.sid, EV_NEW_TASK, {tid, tonumber(t.st), t.pay, list(t.outs),
    list(t.deps), retry_of, origin})
end

-- -- blobs ----------------------------------------------------------------------

local function drop_blob(ctx, bid)
  if colocated(ctx, bid) then
    C('DEL', k_chunks(ctx, bid), k_blob(ctx, bid))
  else
    table.insert(ctx.dropped, bid)
  end
end

local function store_blob(ctx, bid, data)
  if #data > 0 then
    C('RPUSH', k_chunks(ctx, bid), data)
  end
  C('HSET', k_blob(ctx, bid), 'sz', #data, 'n', #data > 0 and 1 or 0, 'ref', 1)
end

-- -- tasks ----------------------------------------------------------------------

local function enqueue(ctx, tid, t)
  local score = -tonumber(t.prio) * 1e12 + tonumber(t.ord)
  C('ZADD', k_queue(ctx, t.sid, t.part), score, tid)
  C('SADD', ctx.B .. ':qp:' .. t.sid, t.part)
  ctx.queued[t.part] = t.sid
end

-- Change a task's status, with its event when the task is visible.
local function set_status(ctx, tid, t, status, extra)
  local fields = {'st', status}
  for name, value in pairs(extra or {}) do
    table.insert(fields, name)
    table.insert(fields, value)
  end
  C('HSET', k_task(ctx, tid), unpack(fields))
  local old = t.st
  t.st = tostring(status)
  if t.stg == nil and tostring(old) ~= t.st then
    emit(ctx, t.sid, EV_TASK_STATUS, {tid, status})
  end
  if status == T_SUBMITTED and t.stg == nil then
    enqueue(ctx, tid, t)
  end
  if tostring(old) == tostring(T_SUBMITTED) and status ~= T_SUBMITTED then
    C('ZREM', k_queue(ctx, t.sid, t.part), tid)
  end
end

local function is_final(status)
  status = tonumber(status)
  return status == T_COMPLETED or status == T_ERROR or status == T_TIMEOUT
    or status == T_CANCELLED
end

local function is_leased(status)
  status = tonumber(status)
  return status == T_DISPATCHED or status == T_PROCESSING or status == T_CANCELLING
end

-- The attempt's task, if the attempt is still the task's; else an error reply.
local function attempt(ctx, tid, token, agent, cancelling_ok)
  local t = hash(k_task(ctx, tid))
  if t == nil or t.tok ~= token or not is_leased(t.st) then
    return nil, fail_with('LEASELOST', 'the attempt of agent ' .. quoted(agent)
      .. ' on task ' .. tid .. ' is no longer the task\'s: it ended, or its lease '
      .. 'expired and was recovered')
  end
  if tonumber(t.st) == T_CANCELLING and not cancelling_ok then
    return nil, fail_with('TASKCANCELLED', 'task ' .. tid .. ' was cancelled: stop '
      .. 'the attempt and mark it cancelled')
  end
  return t
end

local function open_outputs(ctx, tid, sid)
  local keys = {}
  for _, key in ipairs(C('SMEMBERS', k_owned(ctx, tid))) do
    if tonumber(C('HGET', k_result(ctx, sid, key), 'st')) == R_CREATED then
      table.insert(keys, key)
    end
  end
  table.sort(keys)
  return keys
end

local function end_attempt(ctx, tid, t, status, message)
  set_status(ctx, tid, t, status, {msg = message or '', ['end'] = ctx.nows})
  C('HDEL', k_task(ctx, tid), 'tok', 'lease')
  C('ZREM', k_leases(ctx, t.sid), tid)
end

-- -- results --------------------------------------------------------------------

local function aborted_message(key)
  return 'data dependency ' .. quoted(key) .. ' was aborted'
end

-- Abort the results and, transitively, fail the tasks that wait for them.
local function abort(ctx, sid, keys)
  local pending = {}
  for _, key in ipairs(keys) do table.insert(pending, key) end
  while #pending > 0 do
    local key = table.remove(pending)
    local rk = k_result(ctx, sid, key)
    if tonumber(C('HGET', rk, 'st')) == R_CREATED then
      C('HSET', rk, 'st', R_ABORTED)
      if C('HEXISTS', rk, 'stg') == 0 then
        emit(ctx, sid, EV_RESULT_STATUS, {key, R_ABORTED})
      end
      local wk = k_waiting(ctx, sid, key)
      local waiting = C('SMEMBERS', wk)
      C('DEL', wk)
      table.sort(waiting)
      -- A staged subtask is left alone: its parent's commit checks it.
      for _, wid in ipairs(waiting) do
        local w = hash(k_task(ctx, wid))
        if w ~= nil and tonumber(w.st) == T_CREATING and w.stg == nil then
          set_status(ctx, wid, w, T_ERROR, {msg = aborted_message(key),
            ['end'] = ctx.nows})
          for _, out in ipairs(open_outputs(ctx, wid, sid)) do
            table.insert(pending, out)
          end
        end
      end
    end
  end
end

-- Forget what the task's attempt staged: results, subtasks, delegations.
local function discard_staged(ctx, tid, sid)
  local sk = k_staged(ctx, tid)
  local staged = C('HVALS', sk)
  for _, value in ipairs(staged) do
    drop_blob(ctx, string.match(value, '^(.*)|'))
  end
  C('DEL', sk)
  local subk = k_subtasks(ctx, tid)
  local subtasks = C('LRANGE', subk, 0, -1)
  if #subtasks == 0 then
    return
  end
  for _, sub in ipairs(subtasks) do
    local s = hash(k_task(ctx, sub))
    if s ~= nil then
      for _, key in ipairs(list(s.deps)) do
        C('SREM', k_waiting(ctx, sid, key), sub)
      end
      local ok = k_owned(ctx, sub)
      for _, key in ipairs(C('SMEMBERS', ok)) do
        C('DEL', k_result(ctx, sid, key), k_waiting(ctx, sid, key))
      end
      C('DEL', ok, k_task(ctx, sub))
      drop_blob(ctx, s.pay)
    end
  end
  for _, key in ipairs(C('SMEMBERS', k_owned(ctx, tid))) do
    C('HDEL', k_result(ctx, sid, key), 'pend')
  end
  C('DEL', subk)
end

local function move_outputs(ctx, sid, from, to)
  local fk = k_owned(ctx, from)
  local keys = C('SMEMBERS', fk)
  table.sort(keys)
  for _, key in ipairs(keys) do
    C('HSET', k_result(ctx, sid, key), 'own', to)
    emit(ctx, sid, EV_RESULT_OWNER, {key, from, to})
  end
  if #keys > 0 then
    C('SADD', k_owned(ctx, to), unpack(keys))
  end
  C('DEL', fk)
end

local function retry(ctx, tid, t)
  local rid = fresh_id(ctx)
  local retry_of = list(t.rty)
  table.insert(retry_of, tid)
  local ord = C('HINCRBY', k_session(ctx, t.sid), 'ord', 1)
  local r = {}
  for _, name in ipairs({'sid', 'part', 'prio', 'maxr', 'opt', 'pay', 'psz', 'deps',
      'outs', 'par', 'an', 'av', 'ans', 'asv'}) do
    r[name] = t[name]
  end
  r.id = rid
  r.st = tostring(T_SUBMITTED)
  r.rty = json_list(retry_of)
  r.miss = '0'
  r.msg = ''
  r.agent = ''
  r.c = ctx.nows
  r.sub = ctx.nows
  r.ord = tostring(ord)
  local fields = {}
  for name, value in pairs(r) do
    table.insert(fields, name)
    table.insert(fields, value)
  end
  C('HSET', k_task(ctx, rid), unpack(fields))
  C('ZADD', k_tasks(ctx, t.sid), ord, rid)
  new_task_event(ctx, rid, r)
  enqueue(ctx, rid, r)
  move_outputs(ctx, t.sid, tid, rid)
  return rid
end

-- End a running attempt as failed; retry it if it has retries left.
local function fail_attempt(ctx, tid, t, error, status)
  discard_staged(ctx, tid, t.sid)
  end_attempt(ctx, tid, t, status, error)
  if #list(t.rty) < tonumber(t.maxr) then
    return retry(ctx, tid, t)
  end
  abort(ctx, t.sid, open_outputs(ctx, tid, t.sid))
  return tid
end

local function end_cancelled(ctx, tid, t)
  discard_staged(ctx, tid, t.sid)
  end_attempt(ctx, tid, t, T_CANCELLED, '')
end

local function cancel(ctx, tid, t)
  local status = tonumber(t.st)
  if status == T_CREATING or status == T_SUBMITTED then
    set_status(ctx, tid, t, T_CANCELLED, {['end'] = ctx.nows})
  elseif status == T_DISPATCHED or status == T_PROCESSING then
    set_status(ctx, tid, t, T_CANCELLING)
  else
    return
  end
  abort(ctx, t.sid, open_outputs(ctx, tid, t.sid))
end

-- -- replies --------------------------------------------------------------------

local function task_reply(ctx, tid)
  return C('HGETALL', k_task(ctx, tid))
end

-- What every transition returns besides its own answer: the partitions it queued
-- tasks in, whether it stored events, and the blobs of other slots to delete.
local function outcome(ctx, answer)
  local queued = {}
  for part, sid in pairs(ctx.queued) do
    -- Each partition with the score of its queue's head, for the index.
    local head = C('ZRANGE', k_queue(ctx, sid, part), 0, 0, 'WITHSCORES')
    table.insert(queued, {part, head[2] or false})
  end
  local prefix = string.match(ctx.B, '^(.*):{')
  if #queued > 0 then
    C('PUBLISH', prefix .. ':wake:' .. TOPIC_QUEUE, '')
  end
  if ctx.state or #queued > 0 then
    C('PUBLISH', prefix .. ':wake:' .. TOPIC_STATE, '')
  end
  return {answer, queued, ctx.state and 1 or 0, ctx.dropped}
end

-- -- creating tasks -------------------------------------------------------------

local function plan_outputs(ctx, sid, parent, keys)
  if #keys == 0 then
    return nil, nil, 'a task needs at least one expected output'
  end
  local seen = {}
  for _, key in ipairs(keys) do
    if seen[key] then
      return nil, nil, 'expected outputs listed more than once: ' .. cjson.encode(keys)
    end
    seen[key] = true
  end
  local new, delegated = {}, {}
  for _, key in ipairs(keys) do
    local r = hash(k_result(ctx, sid, key))
    if r == nil then
      table.insert(new, key)
    else
      local exists = 'result ' .. quoted(key) .. ' already exists in session ' .. sid
      if parent == '' or r.own ~= parent then
        return nil, nil, exists
      end
      if r.pend ~= nil then
        return nil, nil, exists .. '; it was already delegated to task ' .. r.pend
      end
      if tonumber(r.st) ~= R_CREATED
          or C('HEXISTS', k_staged(ctx, parent), key) == 1 then
        return nil, nil, exists .. '; task ' .. parent .. ' already sent it'
      end
      table.insert(delegated, key)
    end
  end
  return new, delegated, nil
end

local function dependency_statuses(ctx, sid, parent, task)
  local statuses = {}
  local outputs = {}
  for _, key in ipairs(task.outs) do outputs[key] = true end
  for _, key in ipairs(task.deps) do
    if outputs[key] then
      return nil, 'the task depends on its own expected output ' .. quoted(key)
    end
    local r = hash(k_result(ctx, sid, key))
    if r == nil or (r.stg ~= nil and r.stg ~= parent) then
      return nil, 'data dependency ' .. quoted(key) .. ' is not a result of session '
        .. sid
    end
    statuses[key] = tonumber(r.st)
  end
  return statuses, nil
end

local function payload_size(ctx, task)
  if task.psz ~= nil and task.psz >= 0 then
    return task.psz
  end
  if not colocated(ctx, task.pay) then
    return nil
  end
  local size = C('HGET', k_blob(ctx, task.pay), 'sz')
  if not size then
    return nil
  end
  return tonumber(size)
end

local function initial_status(parent, task, statuses)
  if parent ~= '' then
    return T_CREATING, ''
  end
  local waiting = false
  for _, key in ipairs(task.deps) do
    if statuses[key] == R_ABORTED then
      return T_ERROR, aborted_message(key)
    end
    if statuses[key] == R_CREATED then
      waiting = true
    end
  end
  if waiting then
    return T_CREATING, ''
  end
  return T_SUBMITTED, ''
end

local function store_outputs(ctx, sid, tid, parent, status, new, delegated)
  local rstatus = status == T_ERROR and R_ABORTED or R_CREATED
  for _, key in ipairs(new) do
    local ord = C('HINCRBY', k_session(ctx, sid), 'rord', 1)
    local fields = {'own', tid, 'st', rstatus, 'sz', 0, 'c', ctx.nows, 'ord', ord}
    if parent ~= '' then
      table.insert(fields, 'stg')
      table.insert(fields, parent)
    end
    C('HSET', k_result(ctx, sid, key), unpack(fields))
    C('SADD', k_owned(ctx, tid), key)
    if parent == '' then
      C('ZADD', k_results(ctx, sid), ord, key)
      emit(ctx, sid, EV_NEW_RESULT, {key, tid, rstatus})
    end
  end
  for _, key in ipairs(delegated) do
    C('HSET', k_result(ctx, sid, key), 'pend', tid)
  end
end

local function insert_task(ctx, req, task, size, new, delegated, statuses)
  local tid = fresh_id(ctx)
  local status, message = initial_status(req.parent, task, statuses)
  local missing = {}
  for _, key in ipairs(task.deps) do
    if statuses[key] == R_CREATED then table.insert(missing, key) end
  end
  local ord = C('HINCRBY', k_session(ctx, req.sid), 'ord', 1)
  local t = {id = tid, sid = req.sid, st = tostring(status), part = req.part, prio = req.prio,
    maxr = req.maxr, opt = req.opt, pay = task.pay, psz = tostring(size),
    deps = json_list(task.deps), outs = json_list(task.outs), par = req.lineage,
    rty = '[]', miss = tostring(#missing), msg = message, agent = '', c = ctx.nows,
    ord = tostring(ord), an = req.an, av = req.av, ans = req.ans, asv = req.asv}
  if status == T_SUBMITTED then t.sub = ctx.nows end
  if is_final(status) then t['end'] = ctx.nows end
  if req.parent ~= '' then t.stg = req.parent end
  local fields = {}
  for name, value in pairs(t) do
    table.insert(fields, name)
    table.insert(fields, value)
  end
  C('HSET', k_task(ctx, tid), unpack(fields))
  if colocated(ctx, task.pay) then
    C('HSET', k_blob(ctx, task.pay), 'ref', 1)
  end
  if req.parent == '' then
    C('ZADD', k_tasks(ctx, req.sid), ord, tid)
    C('SADD', k_apps(ctx, req.sid), cjson.encode({req.an, req.av, req.ans, req.asv}))
    new_task_event(ctx, tid, t)
    if status == T_SUBMITTED then enqueue(ctx, tid, t) end
  else
    C('RPUSH', k_subtasks(ctx, req.parent), tid)
  end
  store_outputs(ctx, req.sid, tid, req.parent, status, new, delegated)
  if status == T_CREATING then
    for _, key in ipairs(missing) do
      C('SADD', k_waiting(ctx, req.sid, key), tid)
    end
  end
  return tid
end

local function create(ctx, req, task)
  if req.refusal ~= '' then
    return {'R', req.refusal}
  end
  local new, delegated, refusal = plan_outputs(ctx, req.sid, req.parent, task.outs)
  if refusal then return {'R', refusal} end
  local statuses, dep_refusal = dependency_statuses(ctx, req.sid, req.parent, task)
  if dep_refusal then return {'R', dep_refusal} end
  local size = payload_size(ctx, task)
  if size == nil then
    return {'R', 'no payload blob ' .. quoted(task.pay)}
  end
  local tid = insert_task(ctx, req, task, size, new, delegated, statuses)
  return {'T', task_reply(ctx, tid)}
end

-- ARGV[4]: the request as JSON: sid, parent, token, agent, opt, part, prio, maxr,
-- an, av, ans, asv, refusal and tasks (each: pay, psz, outs, deps).
local function submit(keys, args)
  local ctx = context(keys, args)
  local req = cjson.decode(args[4])
  req.opt = unhex(req.opt)
  local session = hash(k_session(ctx, req.sid))
  if session == nil then
    return fail_with('NOTFOUND', 'no session ' .. quoted(req.sid))
  end
  req.lineage = '[]'
  if req.parent ~= '' then
    local parent, err = attempt(ctx, req.parent, req.token, req.agent, false)
    if parent == nil then return err end
    local lineage = list(parent.par)
    table.insert(lineage, req.parent)
    req.lineage = json_list(lineage)
  elseif tonumber(session.st) == S_CANCELLED then
    return fail_with('SESSIONCANCELLED', 'session ' .. req.sid
      .. ' is cancelled: it takes no new tasks')
  end
  local answers = {}
  for _, task in ipairs(req.tasks) do
    table.insert(answers, create(ctx, req, task))
  end
  return outcome(ctx, answers)
end

-- -- sessions -------------------------------------------------------------------

-- ARGV[4..]: session id, options, partitions (JSON), application name, version,
-- owner.
local function create_session(keys, args)
  local ctx = context(keys, args)
  local sk = k_session(ctx, args[4])
  if C('EXISTS', sk) == 1 then
    return fail_with('BACKEND', 'session ' .. args[4] .. ' exists')
  end
  C('HSET', sk, 'st', S_RUNNING, 'opt', args[5], 'parts', args[6], 'c', ctx.nows,
    'an', args[7], 'av', args[8], 'ow', args[9], 'seq', 0, 'ord', 0, 'rord', 0)
  ctx.state = true
  return outcome(ctx, C('HGETALL', sk))
end

local function cancel_session(keys, args)
  local ctx = context(keys, args)
  local sid = args[4]
  local sk = k_session(ctx, sid)
  local session = hash(sk)
  if session == nil then
    return fail_with('NOTFOUND', 'no session ' .. quoted(sid))
  end
  if tonumber(session.st) ~= S_CANCELLED then
    C('HSET', sk, 'st', S_CANCELLED, 'x', ctx.nows)
    ctx.state = true
    -- Each task is cancelled from the status it had when the session was: one
    -- that an earlier cancellation failed (its dependency aborted) ends CANCELLED.
    local snapshot = {}
    for _, tid in ipairs(C('ZRANGE', k_tasks(ctx, sid), 0, -1)) do
      local t = hash(k_task(ctx, tid))
      if t ~= nil and not is_final(t.st) and tonumber(t.st) ~= T_CANCELLING then
        table.insert(snapshot, {tid, t})
      end
    end
    for _, entry in ipairs(snapshot) do
      cancel(ctx, entry[1], entry[2])
    end
  end
  return outcome(ctx, C('HGETALL', sk))
end

-- -- the agent's side -----------------------------------------------------------

-- ARGV[4..]: session, partition, agent, token, lease seconds, payload_up_to.
local function acquire(keys, args)
  local ctx = context(keys, args)
  local sid, part = args[4], args[5]
  local qk = k_queue(ctx, sid, part)
  local head = C('ZPOPMIN', qk)
  if #head == 0 then
    return outcome(ctx, {0})
  end
  local tid = head[1]
  local t = hash(k_task(ctx, tid))
  local expires = ctx.now + tonumber(args[8])
  -- Popped already: set_status must not touch the queue again.
  t.st = 'popped'
  set_status(ctx, tid, t, T_DISPATCHED, {agent = args[6], tok = args[7],
    lease = stamp(expires), acq = ctx.nows})
  C('ZADD', k_leases(ctx, sid), expires, tid)
  local payload = false
  if tonumber(t.psz) <= tonumber(args[9]) and colocated(ctx, t.pay) then
    payload = table.concat(C('LRANGE', k_chunks(ctx, t.pay), 0, -1))
  end
  local left = C('ZRANGE', qk, 0, 0, 'WITHSCORES')
  return outcome(ctx, {1, task_reply(ctx, tid), payload, left[2] or false})
end

-- ARGV[4..]: task, token, agent.
local function start(keys, args)
  local ctx = context(keys, args)
  local t, err = attempt(ctx, args[4], args[5], args[6], false)
  if t == nil then return err end
  if tonumber(t.st) == T_DISPATCHED then
    set_status(ctx, args[4], t, T_PROCESSING, {sta = ctx.nows})
  end
  return outcome(ctx, 1)
end

-- ARGV[4..]: task, token, agent, lease seconds.
local function renew(keys, args)
  local ctx = context(keys, args)
  local tid = args[4]
  local t, err = attempt(ctx, tid, args[5], args[6], false)
  if t == nil then return err end
  local expires = ctx.now + tonumber(args[7])
  C('HSET', k_task(ctx, tid), 'lease', stamp(expires))
  C('ZADD', k_leases(ctx, t.sid), expires, tid)
  return outcome(ctx, stamp(expires))
end

local function owned_error(tid, sid, key, r)
  if r == nil then
    return fail_with('NOTOWNED', 'task ' .. tid .. ' cannot send ' .. quoted(key)
      .. ': session ' .. sid .. ' has no such result')
  end
  if r.own ~= tid then
    return fail_with('NOTOWNED', 'task ' .. tid .. ' does not own result '
      .. quoted(key))
  end
  if r.pend ~= nil then
    return fail_with('NOTOWNED', 'task ' .. tid .. ' delegated result ' .. quoted(key)
      .. ' to task ' .. r.pend)
  end
  if tonumber(r.st) ~= R_CREATED then
    local names = {[R_COMPLETED] = 'COMPLETED', [R_ABORTED] = 'ABORTED'}
    return fail_with('NOTOWNED', 'result ' .. quoted(key) .. ' is '
      .. names[tonumber(r.st)])
  end
  return nil
end

local function check_owned(ctx, tid, t, key)
  return owned_error(tid, t.sid, key, hash(k_result(ctx, t.sid, key)))
end

local function stage(ctx, tid, key, bid, size)
  local sk = k_staged(ctx, tid)
  local replaced = C('HGET', sk, key)
  C('HSET', sk, key, bid .. '|' .. size)
  if replaced then
    local old = string.match(replaced, '^(.*)|')
    if old ~= bid then drop_blob(ctx, old) end
  end
end

-- ARGV[4..]: task, token, agent, key, blob id, size (-1: look it up), data (when
-- the blob is stored here and now).
local function stage_result(keys, args)
  local ctx = context(keys, args)
  local tid, key, bid = args[4], args[7], args[8]
  local t, err = attempt(ctx, tid, args[5], args[6], false)
  if t == nil then return err end
  local owned = check_owned(ctx, tid, t, key)
  if owned then return owned end
  local size = tonumber(args[9])
  if args[10] ~= nil then
    store_blob(ctx, bid, args[10])
    size = #args[10]
  elseif size < 0 then
    local known = colocated(ctx, bid) and C('HGET', k_blob(ctx, bid), 'sz')
    if not known then
      return fail_with('NOTFOUND', 'no blob ' .. quoted(bid))
    end
    size = tonumber(known)
    C('HSET', k_blob(ctx, bid), 'ref', 1)
  end
  stage(ctx, tid, key, bid, size)
  return outcome(ctx, size)
end

local function unstage_subtasks(ctx, tid, sid)
  local subtasks = C('LRANGE', k_subtasks(ctx, tid), 0, -1)
  C('DEL', k_subtasks(ctx, tid))
  local staged = {}
  for _, sub in ipairs(subtasks) do
    local s = hash(k_task(ctx, sub))
    C('HDEL', k_task(ctx, sub), 'stg')
    s.stg = nil
    C('ZADD', k_tasks(ctx, sid), s.ord, sub)
    C('SADD', k_apps(ctx, sid), cjson.encode({s.an, s.av, s.ans, s.asv}))
    new_task_event(ctx, sub, s)
    table.insert(staged, s)
  end
  for i, sub in ipairs(subtasks) do
    local keys = C('SMEMBERS', k_owned(ctx, sub))
    table.sort(keys)
    for _, key in ipairs(keys) do
      local rk = k_result(ctx, sid, key)
      local r = hash(rk)
      if r.stg == tid then
        C('HDEL', rk, 'stg')
        C('ZADD', k_results(ctx, sid), r.ord, key)
        emit(ctx, sid, EV_NEW_RESULT, {key, sub, tonumber(r.st)})
      end
    end
  end
  local owned = C('SMEMBERS', k_owned(ctx, tid))
  table.sort(owned)
  for _, key in ipairs(owned) do
    local rk = k_result(ctx, sid, key)
    local pending = C('HGET', rk, 'pend')
    if pending then
      C('HSET', rk, 'own', pending)
      C('HDEL', rk, 'pend')
      C('SREM', k_owned(ctx, tid), key)
      C('SADD', k_owned(ctx, pending), key)
      emit(ctx, sid, EV_RESULT_OWNER, {key, tid, pending})
    end
  end
  return subtasks
end

local function commit_staged_results(ctx, tid, sid)
  local sk = k_staged(ctx, tid)
  local flat = C('HGETALL', sk)
  local keys = {}
  for i = 1, #flat, 2 do
    local key, value = flat[i], flat[i + 1]
    local bid, size = string.match(value, '^(.*)|(%d+)$')
    local rk = k_result(ctx, sid, key)
    C('HSET', rk, 'st', R_COMPLETED, 'blob', bid, 'sz', size, 'done', ctx.nows)
    emit(ctx, sid, EV_RESULT_STATUS, {key, R_COMPLETED})
    table.insert(keys, key)
  end
  for _, key in ipairs(keys) do
    local wk = k_waiting(ctx, sid, key)
    local waiting = C('SMEMBERS', wk)
    table.sort(waiting)
    for _, wid in ipairs(waiting) do
      local wtk = k_task(ctx, wid)
      local missing = C('HINCRBY', wtk, 'miss', -1)
      local w = hash(wtk)
      if missing == 0 and tonumber(w.st) == T_CREATING and w.stg == nil then
        set_status(ctx, wid, w, T_SUBMITTED, {sub = ctx.nows})
      end
    end
    C('DEL', wk)
  end
  C('DEL', sk)
end

local function aborted_dependency(ctx, t)
  for _, key in ipairs(list(t.deps)) do
    if tonumber(C('HGET', k_result(ctx, t.sid, key), 'st')) == R_ABORTED then
      return key
    end
  end
  return nil
end

-- Queue a just-committed subtask, or fail it if a dependency was aborted.
local function activate(ctx, sub)
  local s = hash(k_task(ctx, sub))
  if is_final(s.st) then
    abort(ctx, s.sid, open_outputs(ctx, sub, s.sid))
    return
  end
  if tonumber(s.st) ~= T_CREATING then
    return
  end
  local aborted = aborted_dependency(ctx, s)
  if aborted ~= nil then
    set_status(ctx, sub, s, T_ERROR, {msg = aborted_message(aborted),
      ['end'] = ctx.nows})
    abort(ctx, s.sid, open_outputs(ctx, sub, s.sid))
  elseif tonumber(s.miss) == 0 then
    set_status(ctx, sub, s, T_SUBMITTED, {sub = ctx.nows})
  end
end

local function unsent_outputs(ctx, tid, sid, held)
  local unsent = {}
  local sk = k_staged(ctx, tid)
  for _, key in ipairs(C('SMEMBERS', k_owned(ctx, tid))) do
    local r = hash(k_result(ctx, sid, key))
    if tonumber(r.st) == R_CREATED and r.pend == nil and not held[key]
        and C('HEXISTS', sk, key) == 0 then
      table.insert(unsent, key)
    end
  end
  table.sort(unsent)
  return unsent
end

-- ARGV[4..]: task, token, agent, then (key, blob id, data) per held result.
local function complete(keys, args)
  local ctx = context(keys, args)
  local tid = args[4]
  local t, err = attempt(ctx, tid, args[5], args[6], false)
  if t == nil then return err end
  local held = {}
  for i = 7, #args, 3 do
    local owned = check_owned(ctx, tid, t, args[i])
    if owned then return owned end
    held[args[i]] = true
  end
  local unsent = unsent_outputs(ctx, tid, t.sid, held)
  if #unsent > 0 then
    return fail_with('MISSING', cjson.encode(unsent))
  end
  for i = 7, #args, 3 do
    store_blob(ctx, args[i + 1], args[i + 2])
    stage(ctx, tid, args[i], args[i + 1], #args[i + 2])
  end
  local subtasks = unstage_subtasks(ctx, tid, t.sid)
  commit_staged_results(ctx, tid, t.sid)
  for _, sub in ipairs(subtasks) do
    activate(ctx, sub)
  end
  end_attempt(ctx, tid, t, T_COMPLETED, '')
  return outcome(ctx, task_reply(ctx, tid))
end

-- ARGV[4..]: task, token, agent, error, status.
local function fail(keys, args)
  local ctx = context(keys, args)
  local t, err = attempt(ctx, args[4], args[5], args[6], false)
  if t == nil then return err end
  local answer = fail_attempt(ctx, args[4], t, args[7], tonumber(args[8]))
  return outcome(ctx, task_reply(ctx, answer))
end

-- ARGV[4..]: task, token, agent.
local function release(keys, args)
  local ctx = context(keys, args)
  local tid = args[4]
  local t, err = attempt(ctx, tid, args[5], args[6], true)
  if t == nil then return err end
  if tonumber(t.st) == T_CANCELLING then
    end_cancelled(ctx, tid, t)
    return outcome(ctx, 1)
  end
  discard_staged(ctx, tid, t.sid)
  C('HDEL', k_task(ctx, tid), 'tok', 'lease', 'acq', 'sta')
  C('ZREM', k_leases(ctx, t.sid), tid)
  set_status(ctx, tid, t, T_SUBMITTED, {agent = ''})
  return outcome(ctx, 1)
end

-- ARGV[4..]: task, token, agent.
local function mark_cancelled(keys, args)
  local ctx = context(keys, args)
  local tid = args[4]
  local t, err = attempt(ctx, tid, args[5], args[6], true)
  if t == nil then return err end
  if tonumber(t.st) ~= T_CANCELLING then
    return fail_with('BACKEND', 'task ' .. tid .. ' is not being cancelled; end the '
      .. 'attempt with complete, fail or release')
  end
  end_cancelled(ctx, tid, t)
  return outcome(ctx, task_reply(ctx, tid))
end

-- ARGV[4]: session. Each reply entry: task, agent, attempt, what became of it.
local function recover(keys, args)
  local ctx = context(keys, args)
  local sid = args[4]
  local expired = C('ZRANGEBYSCORE', k_leases(ctx, sid), '-inf', '(' .. ctx.now)
  local recovered = {}
  for _, tid in ipairs(expired) do
    local t = hash(k_task(ctx, tid))
    if t == nil or not is_leased(t.st) then
      C('ZREM', k_leases(ctx, sid), tid)
    elseif tonumber(t.st) == T_CANCELLING then
      end_cancelled(ctx, tid, t)
      table.insert(recovered, {tid, t.agent, #list(t.rty) + 1, 'cancelled', ''})
    else
      local message = 'lease expired at ' .. iso(tonumber(t.lease)) .. ': agent '
        .. quoted(t.agent) .. ' stopped renewing it'
      local after = fail_attempt(ctx, tid, t, message, T_ERROR)
      table.insert(recovered, {tid, t.agent, #list(t.rty) + 1, after, message})
    end
  end
  -- Announce the session's queues again, in case a process died between queueing
  -- a task and announcing it.
  for _, part in ipairs(C('SMEMBERS', ctx.B .. ':qp:' .. sid)) do
    if C('ZCARD', k_queue(ctx, sid, part)) > 0 then
      ctx.queued[part] = sid
    end
  end
  return outcome(ctx, recovered)
end

-- ARGV[4..]: task ids, all of this slot and all known to exist.
local function cancel_tasks(keys, args)
  local ctx = context(keys, args)
  local replies = {}
  for i = 4, #args do
    local t = hash(k_task(ctx, args[i]))
    if t ~= nil then
      cancel(ctx, args[i], t)
    end
  end
  for i = 4, #args do
    table.insert(replies, task_reply(ctx, args[i]))
  end
  return outcome(ctx, replies)
end

-- ARGV[4]: blob id; ARGV[5]: "" or, with the last chunks, "<size>:<count>", which
-- makes the blob whole; ARGV[6..]: chunks to append.
local function append(keys, args)
  local ctx = context(keys, args)
  local bid = args[4]
  if #args >= 6 then
    C('RPUSH', k_chunks(ctx, bid), unpack(args, 6))
  end
  if args[5] ~= '' then
    local size, count = string.match(args[5], '^(%d+):(%d+)$')
    C('HSET', k_blob(ctx, bid), 'sz', size, 'n', count)
  end
  return outcome(ctx, C('LLEN', k_chunks(ctx, bid)))
end

-- ARGV[4..]: blob ids of this slot; deletes those that nothing references.
local function discard_blobs(keys, args)
  local ctx = context(keys, args)
  for i = 4, #args do
    local bk = k_blob(ctx, args[i])
    if C('HGET', bk, 'ref') ~= '1' then
      C('DEL', bk, k_chunks(ctx, args[i]))
    end
  end
  return outcome(ctx, 1)
end


-- A call that the client sends again (its connection broke before the reply came)
-- carries the same nonce: it gets the first call's reply instead of running twice.
local function once(fn)
  return function(keys, args)
    local memo = keys[1] .. ':once:' .. args[3]
    local done = C('GET', memo)
    if done then
      return cmsgpack.unpack(done)
    end
    local reply = fn(keys, args)
    if type(reply) ~= 'table' or reply.err == nil then
      C('SET', memo, cmsgpack.pack(reply), 'EX', MEMO_SECONDS)
    end
    return reply
  end
end

redis.register_function('gp_submit', once(submit))
redis.register_function('gp_create_session', once(create_session))
redis.register_function('gp_cancel_session', once(cancel_session))
redis.register_function('gp_acquire', once(acquire))
redis.register_function('gp_start', start)
redis.register_function('gp_renew', renew)
redis.register_function('gp_stage_result', once(stage_result))
redis.register_function('gp_complete', once(complete))
redis.register_function('gp_fail', once(fail))
redis.register_function('gp_release', once(release))
redis.register_function('gp_mark_cancelled', once(mark_cancelled))
redis.register_function('gp_recover', recover)
redis.register_function('gp_cancel_tasks', once(cancel_tasks))
redis.register_function('gp_discard_blobs', discard_blobs)
redis.register_function('gp_append', once(append))
