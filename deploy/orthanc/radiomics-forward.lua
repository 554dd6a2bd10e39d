-- Orthanc Lua script: forward to the radiomics node the series it processes, once each series is
-- stable (no new instance for "StableAge" seconds). Install: list this file in "LuaScripts" of
-- Orthanc's configuration (deploy/orthanc/orthanc.json) and declare the node in
-- "DicomModalities" under the name in NODE below.
--
-- Forwarded: image series of IMAGE_MODALITIES whose SeriesDescription contains one of
-- DESCRIPTIONS (case-insensitive; an empty list forwards every image series), and every SEG and
-- RTSTRUCT series (the node pairs each with the image series it references, whichever arrives
-- last). Never forwarded: the node's own results, whose SeriesDescription starts with
-- "Radiomics" (SR, parametric maps), so results that come back are not sent round again.
-- OnStableSeries fires once per series, so a study that grows (the node's SR arriving) does not
-- send its images again.

local NODE = 'radiomics'                      -- the DicomModalities entry of the node
local IMAGE_MODALITIES = { CT = true, MR = true }
local DESCRIPTIONS = { 'portal', 'venous', 'pv ' }
local SEGMENTATION_MODALITIES = { SEG = true, RTSTRUCT = true }
local RESULTS_PREFIX = 'radiomics'

local function described(description)
   if #DESCRIPTIONS == 0 then
      return true
   end
   local text = string.lower(description or '') .. ' '
   for _, word in ipairs(DESCRIPTIONS) do
      if string.find(text, word, 1, true) then
         return true
      end
   end
   return false
end

local function wanted(tags)
   local modality = tags['Modality'] or ''
   local description = string.lower(tags['SeriesDescription'] or '')
   if string.sub(description, 1, #RESULTS_PREFIX) == RESULTS_PREFIX then
      return false
   end
   if SEGMENTATION_MODALITIES[modality] then
      return true
   end
   return IMAGE_MODALITIES[modality] == true and described(tags['SeriesDescription'])
end

function OnStableSeries(seriesId, tags, metadata)
   if not wanted(tags) then
      return
   end
   print('radiomics-forward: sending series ' .. seriesId .. ' (' .. (tags['Modality'] or '?') ..
         ') to ' .. NODE)
   -- synchronous C-STORE of every instance of the series; an error is logged by Orthanc and
   -- the series can be sent again from Orthanc Explorer or POST /modalities/radiomics/store
   RestApiPost('/modalities/' .. NODE .. '/store', seriesId)
end
