-- Argo CD health check for modelops.dev Dataset (resource.customizations.health.modelops.dev_Dataset).
-- Argo CD runs custom checks without Lua's string and math libraries: only base functions here.
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
if phase == "Ready" then
  hs.status = "Healthy"
  if ready ~= nil and text(ready.message) then
    hs.message = ready.message
  elseif text(obj.status.version) then
    hs.message = "version " .. obj.status.version
  else
    hs.message = "Ready"
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = explain(ready, "the dataset could not be prepared")
else
  hs.status = "Progressing"
  hs.message = explain(ready, "phase " .. tostring(phase or "Pending"))
end
return hs
