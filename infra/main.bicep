// Deploys the imagebuilder Functions app: a resource group holding the app (app.bicep), and at
// subscription scope the least-privilege custom role its identity needs to build images anywhere in
// the subscription (imagebuilder-role.json). `azd up` from this folder (see README.md).
targetScope = 'subscription'

@minLength(1)
@maxLength(40)
@description('azd environment name; names and tags derive from it')
param environmentName string

@minLength(1)
@description('Region of the app (image builds may target any region)')
param location string

@description('Durable Functions task hub name (app setting IMAGEBUILDER_TASK_HUB)')
param taskHub string = 'ImageBuilderHub'

@description('Also create an Azure Compute Gallery for distribution targets (\'true\' or \'false\': azd passes strings)')
param createGallery string = 'false'

@description('Object id of the deploying user, granted data access to the app storage for troubleshooting (optional)')
param principalId string = ''

@description('Type of principalId: User or ServicePrincipal (a CI pipeline)')
@allowed(['User', 'ServicePrincipal'])
param principalType string = 'User'

var tags = { 'azd-env-name': environmentName, application: 'imagebuilder-functions' }
var role = loadJsonContent('imagebuilder-role.json')

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module app 'app.bicep' = {
  name: 'imagebuilder-app'
  scope: rg
  params: {
    environmentName: environmentName
    location: location
    tags: tags
    taskHub: taskHub
    createGallery: toLower(createGallery) == 'true'
    principalId: principalId
    principalType: principalType
  }
}

resource buildRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, 'imagebuilder-functions-build-role', environmentName)
  properties: {
    roleName: '${role.roleName} (${environmentName})'
    description: role.description
    type: 'CustomRole'
    assignableScopes: [subscription().id]
    permissions: [
      {
        actions: role.actions
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
  }
}

resource buildRoleAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, buildRole.id, environmentName)
  properties: {
    roleDefinitionId: buildRole.id
    principalId: app.outputs.identityPrincipalId
    principalType: 'ServicePrincipal'
    description: 'imagebuilder: create, run and delete build VMs; publish images'
  }
}

output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = app.outputs.functionAppName
output AZURE_FUNCTION_APP_URL string = app.outputs.functionAppUrl
output AZURE_CLIENT_ID string = app.outputs.identityClientId
output IMAGEBUILDER_GALLERY_ID string = app.outputs.galleryId
