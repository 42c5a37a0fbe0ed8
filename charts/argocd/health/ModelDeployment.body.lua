local said = obj.status.message
if ready ~= nil and text(ready.message) then
  said = ready.message
end
if phase == "Degraded" then
  -- A canary was rolled back (analysis failed, or modelops.dev/abort): stable serves all traffic.
  hs.status = "Degraded"
  local degraded = condition("Degraded")
  if degraded ~= nil and text(degraded.message) then
    hs.message = degraded.message
  elseif text(said) then
    hs.message = said
  else
    hs.message = "canary rolled back"
  end
  if text(obj.status.stableVersion) then
    hs.message = hs.message .. "; stable " .. obj.status.stableVersion .. " serves all traffic"
  end
elseif stuck ~= nil or phase == "Failed" then
  -- An invalid spec, or a child's name or the HTTPRoute not handed over: nothing moves until a
  -- person acts (a deployment already serving keeps serving).
  hs.status = "Degraded"
  hs.message = explain(stuck or ready, "the deployment failed")
elseif phase == "Healthy" and not readyHolds then
  -- Still serving, but the spec asks for a model that is not resolved yet (ModelNotRegistered,
  -- TrainingRunNotFound): not Healthy until the operator serves what the spec asks for.
  hs.status = "Progressing"
  hs.message = explain(ready, "resolving the model")
elseif phase == "Healthy" then
  hs.status = "Healthy"
  if text(said) then
    hs.message = said
  else
    hs.message = "serving model " .. tostring(obj.status.stableVersion)
  end
elseif phase == "Paused" then
  -- A pause step without duration, or inconclusive analysis: waits for modelops.dev/promote or abort.
  hs.status = "Suspended"
  if text(said) then
    hs.message = said
  else
    hs.message = "rollout paused: annotate modelops.dev/promote=true or modelops.dev/abort=true"
  end
else
  -- Pending or Progressing: the stable pods roll, a canary goes through its steps, or the model
  -- is not resolved yet (TrainingRunNotFound, ModelNotRegistered).
  hs.status = "Progressing"
  if ready ~= nil and ready.reason ~= "RolloutInProgress" and ready.reason ~= "RollingStable" then
    hs.message = explain(ready, "phase " .. tostring(phase or "Pending"))
  elseif text(said) then
    hs.message = said
  else
    hs.message = "phase " .. tostring(phase or "Pending")
  end
  local canary = obj.status.canary
  if canary ~= nil and text(canary.version) and obj.status.canaryWeight ~= nil then
    hs.message = hs.message .. " (canary " .. canary.version .. " at " .. tostring(obj.status.canaryWeight) .. "% of traffic)"
  end
end
return hs
