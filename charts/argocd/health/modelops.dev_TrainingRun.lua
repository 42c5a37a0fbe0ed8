-- Argo CD health check for modelops.dev TrainingRun (resource.customizations.health.modelops.dev_TrainingRun).
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
if phase == "Succeeded" then
  hs.status = "Healthy"
  if ready ~= nil and text(ready.message) then
    hs.message = ready.message
  elseif obj.status.modelVersion ~= nil then
    hs.message = "model version " .. tostring(obj.status.modelVersion) .. " registered"
  else
    hs.message = "Succeeded"
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = explain(ready, "training failed")
elseif phase == "Suspended" then
  hs.status = "Suspended"
  if ready ~= nil and text(ready.message) then
    hs.message = ready.message
  elseif text(obj.status.progress) then
    hs.message = "suspended: " .. obj.status.progress
  else
    hs.message = "suspended (spec.suspend)"
  end
elseif phase == "Running" and text(obj.status.progress) then
  hs.status = "Progressing"
  hs.message = obj.status.progress
else
  -- Pending, WaitingForDataset (DatasetNotFound, DatasetNotReady, ...), or Running before any progress.
  hs.status = "Progressing"
  if ready ~= nil and (text(ready.message) or text(ready.reason)) then
    hs.message = explain(ready, "")
  elseif text(obj.status.progress) then
    hs.message = obj.status.progress
  else
    hs.message = "phase " .. tostring(phase or "Pending")
  end
end
return hs
