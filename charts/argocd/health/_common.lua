-- Argo CD runs custom checks without Lua's string and math libraries: only base functions here.
-- Shared by every kind: the helpers, then Progressing until the operator has observed the current
-- generation, then what the operator's summary conditions say. The kind's own part follows and sets
-- hs from them, the phase and the Ready condition.
local hs = {}

local function condition(conditionType)
  if obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
end

local function text(value)
  return value ~= nil and value ~= ""
end

-- "Reason: message" of a condition, or the fallback when the condition says nothing.
local function explain(c, fallback)
  if c == nil then
    return fallback
  end
  if text(c.reason) and text(c.message) then
    return c.reason .. ": " .. c.message
  end
  if text(c.message) then
    return c.message
  end
  if text(c.reason) then
    return c.reason
  end
  return fallback
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation or 1)
  return hs
end
local observed = obj.status.observedGeneration or 0
if generation ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
    .. " (status describes generation " .. tostring(observed) .. ")"
  return hs
end

local phase = obj.status.phase
local ready = condition("Ready")
-- Failed and Stalled (True when nothing moves until a person acts) read Degraded whatever the kind.
-- A Ready condition that is not True never reads Healthy, whatever the phase or the reason; a status
-- without conditions (written before they existed) goes by its phase.
local failed = condition("Failed")
local stalled = condition("Stalled")
local stuck = nil
if failed ~= nil and failed.status == "True" then
  stuck = failed
elseif stalled ~= nil and stalled.status == "True" then
  stuck = stalled
end
local readyHolds = ready == nil or ready.status == "True"
