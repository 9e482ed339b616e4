"""The Lua side of Envoy's Lua stream handle API, run once in every Lua state meshpy makes
(meshpy.extensions.lua_runtime).

The objects a script sees (the stream handle, header maps, buffers, stream info, metadata) are Lua
tables with metatables, as Envoy's are userdata with metatables: `handle:headers():get("x")` is a
table lookup and one call into Python (`B`, the bridge: plain functions that take the stream they act
on). A call that must wait (body(), a body chunk, trailers(), httpCall()) asks Python first; when
Python says WAIT it yields a private token, and Python resumes the coroutine when what it waits for
has come, and the method asks again. A yield of anything else is the script's own: an error, as in
Envoy ("script performed an unexpected yield").

Errors are raised at level 2, so that their position is the script's line, as Envoy's are.
"""

PRELUDE = r"""
local B = ...
local TOKEN = {}
local NOVALUE = {}  -- an argument the script left out (luaL's "no value"), told apart from nil
local WAIT = -1  -- (a bridge's "yield, and ask again when resumed"; chunks are numbered from 1)
local yield, resume, create, costatus = coroutine.yield, coroutine.resume, coroutine.create, coroutine.status
local type, error, tostring, tonumber, select = type, error, tostring, tonumber, select
local setmetatable, getmetatable, rawpairs, next, ipairs = setmetatable, getmetatable, pairs, next, ipairs
local floor = math.floor
python = nil

-- Envoy's LuaJIT honours __pairs (Lua 5.2 compatibility): header maps and metadata iterate with pairs().
function pairs(t)
  local mt = getmetatable(t)
  if type(mt) == "table" and mt.__pairs ~= nil then return mt.__pairs(t) end
  return rawpairs(t)
end

-- As luaL_argerror words it for the C function Envoy's method is: called as a method (h:get(x)),
-- the object is not counted and the method is named; otherwise (a tail call) it is argument #1 of '?'.
-- `n` counts the arguments after the object; `depth` is the method's frame (2 when it calls this),
-- and the error is the script's line that called the method, the frame above.
local function argerr(n, want, v, depth)
  local called = debug.getinfo(depth, "n")
  local name, what = called and called.name, called and called.namewhat
  if what ~= "method" then n = n + 1 end
  local got = v == NOVALUE and "no value" or type(v)
  error("bad argument #" .. n .. " to '" .. (name or "?") .. "' (" .. want .. " expected, got " ..
        got .. ")", depth + 1)
end

-- luaL_checkstring: a number is taken as its text.
local function str(v, fname, n)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then return tostring(v) end
  argerr(n, "string", v, 3)
end

local function int(v, fname, n)
  local x = tonumber(v)
  if x == nil then argerr(n, "number", v, 3) end
  return x >= 0 and floor(x) or -floor(-x)
end

local function value(v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then return tostring(v) end
  error("header value must be a string (got " .. t .. ")", 4)
end

-- A table of headers ({name = value or {values}}) as a flat list {name, value, name, value, ...}.
local function flat(t)
  local out, n = {}, 0
  for k, v in rawpairs(t) do
    if type(k) ~= "string" then error("header key must be a string", 3) end
    if type(v) == "table" then
      for _, x in rawpairs(v) do
        out[n + 1] = k; out[n + 2] = value(x); n = n + 2
      end
    else
      out[n + 1] = k; out[n + 2] = value(v); n = n + 2
    end
  end
  return out
end

local function checked(v, e)
  if e ~= nil then error(e, 3) end
  return v
end

-- As Envoy's, the objects a handle gives die when the script waits (yields): one kept across a wait
-- is "used outside of proper scope"; asked for again, it is new. o[3] is the handle, o[4] its run.
local function live(o)
  local h = o[3]
  if h ~= nil and h.g ~= o[4] then error("object used outside of proper scope", 3) end
end
local function new(mt, a, b, h) return setmetatable({a, b, h, h and h.g}, mt) end

-- Header maps: {stream, which}.
local Headers = {}
Headers.__index = Headers
local function headers(s, w, h) return new(Headers, s, w, h) end
-- (No value rather than nil when there is none, as Envoy's.)
function Headers:get(k)
  live(self)
  local v = B.hget(self[1], self[2], str(k, "get", 1))
  if v ~= nil then return v end
end
function Headers:getAtIndex(k, i)
  live(self)
  local v = B.hat(self[1], self[2], str(k, "getAtIndex", 1), int(i, "getAtIndex", 2))
  if v ~= nil then return v end
end
function Headers:getNumValues(k) live(self); return B.hnum(self[1], self[2], str(k, "getNumValues", 1)) end
function Headers:add(...)
  live(self)
  local k, v = ...
  if select("#", ...) < 2 then v = NOVALUE end
  checked(nil, B.hedit(self[1], self[2], 0, str(k, "add", 1), str(v, "add", 2)))
end
function Headers:replace(...)
  live(self)
  local k, v = ...
  if select("#", ...) < 2 then v = NOVALUE end
  checked(nil, B.hedit(self[1], self[2], 1, str(k, "replace", 1), str(v, "replace", 2)))
end
function Headers:remove(k) live(self); checked(nil, B.hedit(self[1], self[2], 2, str(k, "remove", 1), "")) end
function Headers:setHttp1ReasonPhrase(p)
  live(self)
  checked(nil, B.hedit(self[1], self[2], 3, "", str(p, "setHttp1ReasonPhrase", 1)))
end
Headers.__pairs = function(self)
  live(self)
  local list, i = B.hlist(self[1], self[2]), -1
  return function()
    i = i + 2
    local k = list[i]
    if k ~= nil then return k, list[i + 1] end
  end, self, nil
end

-- Buffers: {stream, which} (which: "body", or a body chunk's number).
local Buffer = {}
Buffer.__index = Buffer
function Buffer:length() live(self); return checked(B.blen(self[1], self[2])) end
function Buffer:getBytes(i, n)
  live(self)
  return checked(B.bget(self[1], self[2], int(i, "getBytes", 1), int(n, "getBytes", 2)))
end
function Buffer:setBytes(d) live(self); return checked(B.bset(self[1], self[2], str(d, "setBytes", 1))) end

local function copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in rawpairs(v) do out[k] = copy(x) end
  return out
end

-- Read-only maps of values (route metadata, filter context, dynamic metadata copies): {values}.
local Metadata = {}
Metadata.__index = Metadata
local function metadata(values, h) return new(Metadata, values or {}, nil, h) end
function Metadata:get(k)
  live(self)
  local v = self[1][k]
  if v ~= nil then return copy(v) end  -- (no value when there is none, as Envoy's)
end
Metadata.__pairs = function(self)
  live(self)
  local k, all = nil, self[1]
  return function()
    local v
    k, v = next(all, k)
    if k ~= nil then return k, copy(v) end
  end, self, nil
end

-- Dynamic metadata: {per-request table}; values are copied in and out, as Envoy turns them into
-- protobuf Structs.
local Dynamic = {}
Dynamic.__index = Dynamic
function Dynamic:get(ns)
  live(self)
  local t = self[1][str(ns, "get", 1)]
  if t ~= nil then return copy(t) end
end
function Dynamic:set(ns, k, v)
  live(self)
  ns = str(ns, "set", 1)
  k = str(k, "set", 2)
  local t = self[1][ns]
  if t == nil then t = {}; self[1][ns] = t end
  t[k] = copy(v)
end
Dynamic.__pairs = function(self)
  live(self)
  local k, all = nil, self[1]
  return function()
    local v
    k, v = next(all, k)
    if k ~= nil then return k, copy(v) end
  end, self, nil
end

local Ssl = {}
Ssl.__index = Ssl
for _, name in ipairs({"peerCertificatePresented", "peerCertificateValidated", "uriSanLocalCertificate",
                       "uriSanPeerCertificate", "dnsSansLocalCertificate", "dnsSansPeerCertificate",
                       "subjectPeerCertificate", "sha256PeerCertificateDigest", "tlsVersion",
                       "ciphersuiteString", "urlEncodedPemEncodedPeerCertificate"}) do
  Ssl[name] = function(self) live(self); return B.ssl(self[1], name) end
end

local Connection = {}
Connection.__index = Connection
function Connection:ssl()
  live(self)
  if not B.tls(self[1]) then return nil end
  self.s = self.s or new(Ssl, self[1], nil, self[3])
  return self.s
end

local StreamInfo = {}
StreamInfo.__index = StreamInfo
function StreamInfo:protocol() live(self); return B.info(self[1], "protocol") end
function StreamInfo:downstreamLocalAddress() live(self); return B.info(self[1], "local") end
function StreamInfo:downstreamDirectLocalAddress() live(self); return B.info(self[1], "local") end
function StreamInfo:downstreamDirectRemoteAddress() live(self); return B.info(self[1], "peer") end
function StreamInfo:downstreamRemoteAddress() live(self); return B.info(self[1], "remote") end
function StreamInfo:requestedServerName() live(self); return B.info(self[1], "sni") end
function StreamInfo:routeName() live(self); return B.info(self[1], "route") end
function StreamInfo:virtualClusterName() live(self); return "" end
function StreamInfo:drainConnectionUponCompletion() live(self); B.info(self[1], "drain") end
function StreamInfo:dynamicMetadata()
  live(self)
  self.d = self.d or new(Dynamic, B.dynamic(self[1]), nil, self[3])
  return self.d
end
function StreamInfo:downstreamSslConnection() live(self); return Connection.ssl(self) end

local Host = {}
Host.__index = Host
function Host:metadata() live(self); return metadata(B.metadata(self[1], self[2]), self[3]) end

local PublicKey = {}
PublicKey.__index = PublicKey
function PublicKey:get() live(self); if self[1] == "" then return nil end return self[1] end

-- The stream handle: {stream}.
local Handle = {}
Handle.__index = Handle
function Handle:headers() self.h = self.h or headers(self[1], 0, self); return self.h end
function Handle:body(always)
  if always ~= nil and type(always) ~= "boolean" then argerr(1, "boolean", always, 2) end
  while true do
    local r = checked(B.body(self[1], always == true))
    if r ~= WAIT then
      if r == 0 then return end
      self.b = self.b or new(Buffer, self[1], "body", self)
      return self.b
    end
    yield(TOKEN)
  end
end
function Handle:bodyChunks()
  checked(nil, B.chunks(self[1]))
  local s = self[1]
  return function()
    while true do
      local r = checked(B.chunk(s))
      if r ~= WAIT then
        if r == 0 then return nil end
        return new(Buffer, s, r, self)
      end
      yield(TOKEN)
    end
  end
end
function Handle:trailers()
  while true do
    local r = checked(B.trailers(self[1]))
    if r ~= WAIT then
      if r == 0 then return end
      self.t = self.t or headers(self[1], 1, self)
      return self.t
    end
    yield(TOKEN)
  end
end
function Handle:respond(h, body)
  if type(h) ~= "table" then argerr(1, "table", h, 2) end
  if body ~= nil and type(body) ~= "string" then body = str(body, "respond", 2) end
  checked(nil, B.respond(self[1], flat(h), body))
  yield(TOKEN)
end
local OPTIONS = {asynchronous = true, timeout_ms = true, trace_sampled = true,
                 return_duplicate_headers = true, send_xff = true}
function Handle:httpCall(cluster, h, body, a4, a5)
  cluster = str(cluster, "httpCall", 1)
  if type(h) ~= "table" then argerr(2, "table", h, 2) end
  if body ~= nil then body = str(body, "httpCall", 3) end
  local timeout, async, dup, xff = 0, false, false, true
  if type(a4) == "table" then
    for k, v in rawpairs(a4) do
      if type(k) ~= "string" then error("httpCall() options key must be a string", 2) end
      if not OPTIONS[k] then error('"' .. k .. '" is not valid key for httpCall() options', 2) end
      if k == "timeout_ms" then
        if type(v) ~= "number" then error("'timeout_ms' option must be an integer", 2) end
        timeout = v
      elseif k == "asynchronous" then async = v and true or false
      elseif k == "return_duplicate_headers" then dup = v and true or false
      elseif k == "send_xff" then xff = v and true or false
      end
    end
  else
    if a5 ~= nil and type(a5) ~= "boolean" then
      error("http call asynchronous flag must be 'true', 'false', or empty", 2)
    end
    timeout = int(a4, "httpCall", 4)
    async = a5 == true
  end
  if timeout < 0 then error("http call timeout must be >= 0", 2) end
  checked(nil, B.call(self[1], cluster, flat(h), body, floor(timeout), async, xff))
  if async then return end
  yield(TOKEN)
  local list, rbody = B.answer(self[1])
  local out, n = {}, 1
  while list[n] ~= nil do
    local k, v = list[n], list[n + 1]
    local had = out[k]
    if dup and had ~= nil then
      if type(had) == "table" then had[#had + 1] = v else out[k] = {had, v} end
    else
      out[k] = v
    end
    n = n + 2
  end
  return out, rbody
end
function Handle:metadata() return metadata(B.metadata(self[1], 0), self) end
function Handle:filterContext() return metadata(B.metadata(self[1], 2), self) end
function Handle:virtualHost() return new(Host, self[1], 1, self) end
function Handle:route() return new(Host, self[1], 0, self) end
function Handle:streamInfo() self.i = self.i or new(StreamInfo, self[1], nil, self); return self.i end
function Handle:connection() self.c = self.c or new(Connection, self[1], nil, self); return self.c end
function Handle:logTrace(m) B.log(self[1], 0, str(m, "logTrace", 1)) end
function Handle:logDebug(m) B.log(self[1], 1, str(m, "logDebug", 1)) end
function Handle:logInfo(m) B.log(self[1], 2, str(m, "logInfo", 1)) end
function Handle:logWarn(m) B.log(self[1], 3, str(m, "logWarn", 1)) end
function Handle:logErr(m) B.log(self[1], 4, str(m, "logErr", 1)) end
function Handle:logCritical(m) B.log(self[1], 5, str(m, "logCritical", 1)) end
function Handle:base64Escape(v) return B.base64(str(v, "base64Escape", 1)) end
function Handle:timestamp(unit)
  if unit ~= nil then unit = str(unit, "timestamp", 1) end
  return checked(B.timestamp(unit, false))
end
function Handle:timestampString(unit)
  if unit ~= nil then unit = str(unit, "timestampString", 1) end
  return checked(B.timestamp(unit, true))
end
function Handle:importPublicKey(key, n)
  -- (As Envoy's, the first key imported in a run is the one every later import in it gives.)
  self.k = self.k or new(PublicKey, B.importkey(self[1], str(key, "importPublicKey", 1),
                                                int(n, "importPublicKey", 2)), nil, self)
  return self.k
end
function Handle:verifySignature(hash, key, sig, siglen, text, textlen)
  if type(key) == "table" then key = key[1] end
  local ok, e = B.verify(self[1], str(hash, "verifySignature", 1), str(key, "verifySignature", 2),
                         str(sig, "verifySignature", 3), int(siglen, "verifySignature", 4),
                         str(text, "verifySignature", 5), int(textlen, "verifySignature", 6))
  if ok == nil then error(e, 2) end
  return ok, e
end

EnvoyTimestampResolution = {MILLISECOND = 0, MICROSECOND = 1}

-- The cluster specifier's route handle: {headers}.
local RouteHeaders = {}
RouteHeaders.__index = RouteHeaders
function RouteHeaders:get(k) return B.rget(self[1], str(k, "get", 1)) end
local Cluster = {}
Cluster.__index = Cluster
function Cluster:numConnections() return B.cluster(self[1], 0) end
function Cluster:numRequests() return B.cluster(self[1], 1) end
function Cluster:numPendingRequests() return B.cluster(self[1], 2) end
local RouteHandle = {}
RouteHandle.__index = RouteHandle
function RouteHandle:headers() self.h = self.h or setmetatable({self[1]}, RouteHeaders); return self.h end
function RouteHandle:getCluster(name)
  local c = B.getcluster(self[1], str(name, "getCluster", 1))
  if c == nil then return end  -- (no value, as Envoy's)
  return setmetatable({c}, Cluster)
end

local driver = {}
-- Start `fn` with a new handle on the stream `s` (route: a route handle): "done", "wait" or
-- "error" and the message (done: the function's first result).
local function step(co, h, ...)
  if h ~= nil then  -- what the handle gave in the last run dies with it
    h.g = h.g + 1
    h.h, h.b, h.t, h.i, h.c, h.k = nil, nil, nil, nil, nil, nil
  end
  local ok, a = resume(co, ...)
  if not ok then
    return "error", type(a) == "string" and a or tostring(a)
  end
  if costatus(co) == "dead" then return "done", a end
  if a ~= TOKEN then return "error", "script performed an unexpected yield" end
  return "wait", nil
end
function driver.start(fn, s, route)
  local co = create(fn)
  local handle = setmetatable({s, g = 0}, route and RouteHandle or Handle)
  local kind, v = step(co, nil, handle)
  return co, handle, kind, v
end
driver.step = step
function driver.load(code)
  local chunk, err = loadstring(code, code)
  if chunk == nil then return nil, err end
  local ok, e = pcall(chunk)
  if not ok then return nil, type(e) == "string" and e or tostring(e) end
  return true, nil
end
function driver.global(name)
  local f = _G[name]
  if type(f) == "function" then return f end
  return nil
end
driver.table = function() return {} end
driver.list = function(...) return {...} end
return driver
"""
